"""Connecting to a Dask cluster: the devices workers use and the resources tasks ask for.

``ibtools analyze --workers N`` starts a :class:`distributed.LocalCluster` of N one-thread
processes (:func:`local_client`); ``--scheduler ADDRESS`` joins a running cluster
(:func:`scheduler_client`).  With a CUDA device every task asks for the resource ``GPU: 1``
(:func:`task_resources`), so a worker started with ``--resources GPU=1`` runs one at a time.
"""

from __future__ import annotations

import contextlib
import copy
import logging

import torch

from ibtools.errors import InputError, InputTypeError

INSTALL_HINT = "pip install 'ibtools[dask]'"


def import_distributed():
    """The ``distributed`` module, or an ImportError saying how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(f"running on a Dask cluster needs dask.distributed, which is not "
                          f"installed; {INSTALL_HINT}") from exc
    return distributed


def cluster_device(device) -> str:
    """``device`` as a string the workers resolve: ``"auto"`` stays ``"auto"``; anything
    else must parse as a torch device of type cpu, cuda or mps.  CUDA is checked on each
    worker, not here: the driver of a GPU cluster may have no GPU."""
    if device is None or device == "auto":
        return "auto"
    accepted = "use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"device={device!r} is not a device; {accepted}") from exc
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device={device!r} is not a device estimators run on; {accepted}")
    return str(dev)


def check_executor(executor, device) -> str:
    """Refuse an ``executor`` that is no ``dask.distributed.Client``; return the device for
    the workers (see :func:`cluster_device`)."""
    try:
        from distributed import Client
    except ImportError:
        Client = None
    if Client is None or not isinstance(executor, Client):
        hint = f" (dask.distributed is not installed: {INSTALL_HINT})" if Client is None else ""
        raise InputTypeError(f"executor={executor!r} is not accepted; give a "
                             f"dask.distributed.Client or None to run in this process{hint}")
    return cluster_device(device)


def task_resources(device: str) -> dict | None:
    """The Dask resources a task asks for: one GPU for a CUDA device (so a GPU worker runs
    one task at a time), none otherwise."""
    return {"GPU": 1} if str(device).startswith("cuda") else None


def local_cluster_options(n_workers, device, n_gpus: int) -> dict:
    """Keyword arguments of ``distributed.LocalCluster`` for ``n_workers`` processes of one
    thread each; with a CUDA device each worker holds the resource ``GPU: 1``, and more
    workers than this machine has GPUs are refused."""
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise InputError(f"workers={n_workers!r} is not accepted; use an integer >= 1")
    options = {"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
               "dashboard_address": ":0"}
    device = cluster_device(device)
    if device.startswith("cuda") or (device == "auto" and n_gpus > 0):
        if n_workers > n_gpus:
            raise InputError(f"workers={n_workers} with device={device!r}: this machine has "
                             f"{n_gpus} CUDA device(s) and each worker takes one; use at most "
                             f"{n_gpus} workers, or device='cpu'")
        options["resources"] = {"GPU": 1}
    return options


def worker_device(device: str, worker_name=None, n_gpus: int | None = None) -> torch.device:
    """The device a task uses on its worker.

    ``"auto"`` is CUDA when the worker sees a GPU.  A bare ``"cuda"`` on a worker whose name
    is a number (LocalCluster names its workers 0, 1, ...) is ``cuda:(name mod n_gpus)``, so
    N local workers on N GPUs take one each; a worker started by hand on one GPU
    (``CUDA_VISIBLE_DEVICES=3 dask worker ... --name gpu3``) sees it as ``cuda:0``.
    """
    n = (torch.cuda.device_count() if torch.cuda.is_available() else 0) if n_gpus is None \
        else n_gpus
    if device == "auto":
        device = "cuda" if n > 0 else "cpu"
    dev = torch.device(device)
    number = _as_int(worker_name)
    if dev.type == "cuda" and dev.index is None and n > 0 and number is not None:
        dev = torch.device("cuda", number % n)
    return dev


def _as_int(name):
    if isinstance(name, bool):
        return None
    if isinstance(name, int):
        return name
    return int(name) if isinstance(name, str) and name.isdigit() else None


#: Dask defaults that cost the estimators CPU time, changed for the local cluster's workers.
#: Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also turns off glibc's
#: adaptive mmap threshold, so every temporary tensor over 128 KiB (KDE's pairwise blocks,
#: binning's symbol tables) is a fresh mmap whose pages fault in again.  And each worker
#: samples its own stack every 10 ms for Dask's profiler, checks its event loop every 20 ms
#: and its system load every 0.5 s: bookkeeping that grows with wall time, so most on a busy
#: machine.  The measured effect of each is in benchmarks/RESULTS.md (issue 20).
LEAN_WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                      "distributed.worker.profile.enabled": False,
                      "distributed.admin.tick.interval": "1s",
                      "distributed.admin.system-monitor.interval": "5s"}


def _warm_worker() -> None:
    """On each worker, before the first task: one torch thread (numba's kernels follow it)
    and the analysis modules imported, so no task pays for the imports."""
    torch.set_num_threads(1)
    import ibtools.distributed.tasks  # noqa: F401  (imports the analysis and estimators)


def warm_workers(client) -> None:
    """Import the analysis on every worker of ``client``'s cluster now, before any clock."""
    client.run(_warm_worker)


@contextlib.contextmanager
def local_client(n_workers: int, device="auto", lean: bool = True):
    """A Client of a new LocalCluster of ``n_workers`` one-thread processes, warmed up
    (:func:`warm_workers`), closed on exit.  ``lean`` starts the workers with
    :data:`LEAN_WORKER_CONFIG` (``False``: Dask's defaults, for comparison)."""
    import dask

    distributed = import_distributed()
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    options = local_cluster_options(n_workers, device, n_gpus)
    with dask.config.set(LEAN_WORKER_CONFIG if lean else {}):
        # a deep copy for the nannies: they keep the config to restart a worker that died,
        # and a shallow one would lose these settings when this context restores them
        cluster = distributed.LocalCluster(silence_logs=logging.ERROR,
                                           config=copy.deepcopy(dask.config.config), **options)
    with cluster, distributed.Client(cluster) as client:
        warm_workers(client)
        yield client


@contextlib.contextmanager
def scheduler_client(address: str):
    """A Client of the running cluster at ``address`` (``tcp://host:8786``)."""
    distributed = import_distributed()
    try:
        client = distributed.Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise InputError(f"scheduler={address!r}: no Dask scheduler answered there ({exc}); "
                         f"start one with `dask scheduler` and give its tcp://HOST:PORT") from exc
    with client:
        yield client


@contextlib.contextmanager
def cli_executor(workers, scheduler, device="auto"):
    """The Client ``ibtools analyze --workers N`` / ``--scheduler ADDRESS`` asks for (``None``
    for neither), closed on exit; a problem with the options is a ValueError naming them."""
    if workers is not None and scheduler is not None:
        raise InputError("give --workers or --scheduler, not both: --workers N starts a local "
                         "cluster, --scheduler ADDRESS uses a running one")
    if workers is None and scheduler is None:
        yield None
        return
    option = f"--workers {workers}" if workers is not None else f"--scheduler {scheduler}"
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise InputError(f"--workers {workers} is not accepted; use an integer >= 1")
    try:
        import_distributed()
    except ImportError as exc:
        raise InputError(f"{option}: {exc}") from None
    with (local_client(workers, device) if workers is not None
          else scheduler_client(scheduler)) as client:
        yield client
