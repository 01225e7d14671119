"""``ibtools.analyze`` on a Dask cluster: the serial run's table, computed by workers.

>>> from dask.distributed import Client, LocalCluster
>>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # or Client("tcp://h:8786")
>>> table = ibtools.analyze(checkpoints, out_dir="run", executor=client)

The unit of work
    A task captures one *layer group* of one checkpoint (consecutive layers, plus the layer
    before the first, which I(T_prev;T) needs, and the inputs and targets) and runs every
    pending estimator setting on it, returning rows.  The worker loads the checkpoint from
    its path itself, so activations never pass through this process; a model given as an
    object is pickled once and sent to the workers.  With at least as many checkpoints as
    worker threads a task is a whole checkpoint; with fewer, a *plan* task per checkpoint
    loads it, runs one batch through it and returns its layers in forward order with their
    widths, and the layers are split into as many groups as it takes to give every worker
    thread a task, and further until a group's capture fits in a quarter of a worker's
    memory limit.
The run directory
    Only this process (the driver) writes it, as the serial run does: a journal line per
    finished (layer, setting) step as results arrive, in any order, and the table rewritten
    atomically whenever a checkpoint's last task is in.  The final table is in the serial
    run's order (:func:`run_order`), so a run interrupted on a cluster resumes, serially or
    on a cluster, to the same table.
Failures
    A worker that dies loses only its task: Dask gives it to another worker (up to the
    scheduler's ``distributed.scheduler.allowed-failures``).  A task that raises an
    unexpected error is tried again :data:`RETRIES` times; errors in what was given
    (ValueError, TypeError, a missing file) are raised here at once.
GPUs
    With ``device="cuda"`` every task asks for the resource ``GPU: 1``, so a worker started
    with ``--resources GPU=1`` runs one task at a time on its device; on a worker named by a
    number (LocalCluster's 0, 1, ...), a bare ``"cuda"`` is its own GPU,
    ``cuda:(name mod count)`` (:func:`worker_device`).
"""

from ibtools.distributed.cluster import (INSTALL_HINT, check_executor, cli_executor,
                                         cluster_device, import_distributed, local_client,
                                         local_cluster_options, scheduler_client,
                                         task_resources, worker_device)
from ibtools.distributed.driver import RETRIES, layer_groups, run_on_cluster, run_order
from ibtools.distributed.tasks import ClusterJob

__all__ = ["INSTALL_HINT", "RETRIES", "ClusterJob", "check_executor", "cli_executor",
           "cluster_device", "import_distributed", "layer_groups", "local_client",
           "local_cluster_options", "run_on_cluster", "run_order", "scheduler_client",
           "task_resources", "worker_device"]
