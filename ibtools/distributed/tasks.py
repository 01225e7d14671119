"""The tasks a Dask worker runs for :func:`ibtools.analyze`: a checkpoint's plan (its layers,
from one batch) and a layer group's capture and estimates.  Both load the checkpoint on the
worker, so activations stay there.  A task that fails the same way on every try (ibtools'
own errors -- bad input, a refused estimate, a memory budget exceeded -- and a plain bug)
returns its error as a value, raised on the driver at once as a serial run raises it; only
what another try may not meet (an operating-system error, running out of memory) is raised
on the worker, so that Dask tries the task again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import traceback
import warnings
from pathlib import Path

import torch

from ibtools import analysis, noisy
from ibtools import inputs as inputs_io
from ibtools.analysis_settings import AnalysisSettings
from ibtools.distributed.cluster import worker_device
from ibtools.errors import IbtoolsError

#: What may not happen again on another try (a network file system's error, host or device
#: memory taken by other work on a crowded worker): such a task is retried by Dask.
TRANSIENT = (OSError, MemoryError, torch.OutOfMemoryError)
#: Kinds of those that every try meets: never retried.  ``ResourceExceeded`` (a
#: ``MemoryError``) is an ibtools error: the data does not fit the budget or the device.
DETERMINISTIC = (IbtoolsError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
                 PermissionError)
#: Words ``select_layers`` reads as groups, never as a module's name: a checkpoint whose
#: layers carry one is captured whole, with the user's own ``layers`` spec.
_GROUP_WORDS = ("norms", "blocks", "leaves", "all")

#: Tests only: a path; the first task to create it ends its worker process mid-task.
_exit_once_marker = None


@dataclasses.dataclass(frozen=True)
class ClusterJob:
    """What every task needs: the run's :class:`~ibtools.analysis_settings.AnalysisSettings`,
    the device asked for (each worker resolves it) and the data (the driver replaces data
    that is not a name with a scattered future before the tasks go out)."""

    settings: AnalysisSettings
    device: str
    data: object = None
    data_name: str = ""

    @property
    def specs(self):
        return self.settings.specs

    @property
    def betas(self):
        return self.settings.betas

    @property
    def max_samples(self):
        return self.settings.max_samples


def _arm_exit_once(marker) -> None:
    """Tests only: the next task to create ``marker`` ends its worker (``None`` disarms)."""
    global _exit_once_marker
    _exit_once_marker = marker


def _exit_once_for_tests() -> None:
    if _exit_once_marker is None:
        return
    try:
        os.close(os.open(_exit_once_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(70)  # a worker that dies mid-task, as one killed by the OOM killer would


def _worker_name():
    try:
        from distributed import get_worker

        return get_worker().name
    except (ImportError, ValueError):
        return None


@contextlib.contextmanager
def _on_worker(job: ClusterJob):
    """The task's device, with torch's threads set as ``analyze(threads=...)`` says, and every
    warning recorded (a worker's warnings are shown by the driver)."""
    from ibtools.estimators.base import resolve_device

    dev = resolve_device(worker_device(job.device, _worker_name()))
    threads = job.settings.threads_on(dev)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # a long-lived worker would show each only once
            yield dev, caught
    finally:
        torch.set_num_threads(before)


def _open(job: ClusterJob, source, dev):
    from ibtools.probes import load_model

    kind, name, obj = source
    if kind == "model":  # a fresh copy per task: the capture puts hooks on it
        ckpt = inputs_io.NamedCheckpoint(name, pickle.loads(obj))
    else:
        if not Path(obj).exists():
            raise FileNotFoundError(f"checkpoint {obj!r} cannot be read on Dask worker "
                                    f"{_worker_name()!r}; put checkpoints where every worker "
                                    f"reads them under the same path, or pass the models as "
                                    f"objects")
        ckpt = inputs_io.NamedCheckpoint(name, obj) if name is not None else obj
    settings = job.settings
    model, info = inputs_io.open_checkpoint(ckpt, load_model, arch=settings.arch,
                                            trust_pickle=settings.trust_pickle,
                                            trust_code=settings.trust_code,
                                            strict=settings.strict,
                                            **(settings.arch_kwargs or {}))
    return model.to(dev).eval(), info


def _plan_task(job: ClusterJob, data, source, label) -> dict:
    """A checkpoint's layers in forward order with their widths, from one batch through the
    model, and whether it must stay one group."""
    from ibtools.probes import capture_activations
    from ibtools.probes.datasets import AnalysisData

    try:
        settings = job.settings
        with _on_worker(job) as (dev, caught):
            model, _ = _open(job, source, dev)
            trained_std = noisy.check_single_channel(model, settings.specs, label)
            dataset = inputs_io.resolve_data(data, model=model, split=settings.split,
                                             seed=settings.seed)
            batch = settings.capture_options["batch_size"]
            inputs, targets = next(iter(dataset.batches(batch)))
            probe = AnalysisData(inputs, targets, kind=dataset.kind, name=str(dataset.name))
            with analysis._capture(capture_activations, model, probe, settings.data_name,
                                   layers=settings.layers, pool=settings.pool,
                                   seed=settings.seed, device=dev,
                                   **{k: v for k, v in settings.capture_options.items()
                                      if k == "reduce"}) as acts:
                layers = [(name, int(acts[name][0].numel())) for name in acts.layers]
                x_dim = int(acts.x[0].numel())
        # a noisy network's mixture rows come from one Monte Carlo over all its layers
        whole = bool(trained_std) and any(s.method == "mixture" for s in settings.specs)
        return {"layers": layers, "x_dim": x_dim, "whole": whole,
                "warnings": _shown(caught)}
    except Exception as exc:  # noqa: BLE001 - sorted by meaning in _failure
        return _failure(exc)


def _group_task(job: ClusterJob, data, source, label, ident, fp, entries, todo) -> dict:
    """Rows of one layer group: ``entries`` are (index, name) of the group's layers and of the
    layer before it, ``todo`` maps a layer's name to the indices of the settings it lacks.
    ``entries=None`` is the whole checkpoint with the user's ``layers`` (no plan was needed);
    ``todo`` then holds the (layer, setting, beta) steps already done."""
    settings = job.settings
    try:
        with _on_worker(job) as (dev, caught):
            model, info = _open(job, source, dev)
            base, trained_std, dataset, acts = analysis.prepare_checkpoint(
                settings, data, model, info, (label, ident, fp), dev,
                layers=None if entries is None else _modules(entries, settings.layers))
            _exit_once_for_tests()
            with acts:
                if entries is None:
                    entries, todo = _whole(acts.layers, todo, job)
                # the serial loop's own steps; a noisy network's group is all its layers
                # (the plan's "whole"), so its noise paths are the serial ones
                steps = list(analysis.layer_steps(
                    settings, model, dataset, acts, base, entries,
                    lambda name, spec: any(settings.specs[k] is spec
                                           for k in todo.get(name, ())),
                    trained_std, dev))
        return {"steps": steps, "warnings": _shown(caught)}
    except Exception as exc:  # noqa: BLE001 - sorted by meaning in _failure
        return _failure(exc)


def retried(exc: BaseException) -> bool:
    """Whether a task that raised ``exc`` is run again: only what another try may not meet."""
    return isinstance(exc, TRANSIENT) and not isinstance(exc, DETERMINISTIC)


def _failure(exc: Exception) -> dict:
    """A failed task's answer: ``exc`` as a value for the driver to raise at once, with the
    worker's traceback for an error that is not ibtools' own (a bug).  What may pass on
    another try, and an error that cannot travel back, are raised here for Dask to handle."""
    if retried(exc):
        raise exc
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - Dask's own error path reports it
        raise exc from None
    if isinstance(exc, IbtoolsError):
        return {"error": exc}
    return {"error": exc, "traceback": traceback.format_exc()}


def _whole(layers, done, job: ClusterJob):
    """Entries and settings to run of a whole checkpoint, given its steps already done."""
    entries = list(enumerate(layers))
    todo = {}
    for _, name in entries:
        missing = [k for k, s in enumerate(job.specs)
                   if any((name, s.label, b) not in done for b in job.betas)]
        if missing:
            todo[name] = missing
    return entries, todo


def _module_names(layer_names) -> list[str]:
    """The modules behind layer names (``blocks.0#1`` is a second call of ``blocks.0``)."""
    names = []
    for name in layer_names:
        base, sep, call = name.rpartition("#")
        module = base if sep and call.isdigit() else name
        if module not in names:
            names.append(module)
    return names


def _modules(entries, layers):
    """The modules a group's capture hooks: its layers' own, or the user's ``layers`` spec
    when a name would read as a group word (such a checkpoint is one group)."""
    names = _module_names(name for _, name in entries)
    return layers if any(n in _GROUP_WORDS for n in names) else names


def _shown(caught) -> list:
    return [(w.category, str(w.message)) for w in caught]
