"""The driver of a cluster run: it submits the tasks, gathers their rows as they finish and
alone writes the run directory, as the serial loop of :func:`ibtools.analyze` does.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import warnings

from ibtools import inputs as inputs_io
from ibtools import results as results_io
from ibtools import run_directory
from ibtools.distributed.cluster import task_resources
from ibtools.distributed.tasks import (_GROUP_WORDS, ClusterJob, _group_task, _module_names,
                                       _plan_task)
from ibtools.errors import InputTypeError

#: Extra tries of a task that raised what another try may not meet (``tasks.retried``: an
#: OSError from a network file system, MemoryError on a crowded worker); errors every try
#: meets come back as values and are raised at once.  A worker's death is counted by the
#: scheduler instead.
RETRIES = 2


def run_order(rows: list[dict], idents: list[str], specs, betas) -> list[dict]:
    """``rows`` in the order a serial run writes them: rows of checkpoints outside this run
    first, as they were; then by checkpoint (in the run's order), layer index, estimator
    setting and beta.  Rows that arrived in any order (a cluster's, or resumed from its
    journal) so give the same table as one serial run."""
    position: dict[str, int] = {}
    for i, ident in enumerate(idents):
        position.setdefault(ident, i)
    setting = {s.label: i for i, s in enumerate(specs)}
    beta_at = {float(b): i for i, b in enumerate(betas)}

    def key(item):
        n, row = item
        at = position.get(run_directory.row_identity(row))
        if at is None:
            return (0, n)
        beta = float(row["beta"])
        return (1, at, int(row["layer_index"]), setting.get(str(row["setting"]), len(setting)),
                beta_at.get(beta, len(beta_at)), beta)

    return [row for _, row in sorted(enumerate(rows), key=key)]


def layer_groups(dims: list[int], x_dim: int, rows: int, n_groups: int,
                 byte_budget: int | None) -> list[list[int]]:
    """Consecutive layer indices in ``n_groups`` groups of about equal size, each split further
    until its capture (``rows`` x (inputs + its layers + the layer before) x 4 bytes) fits
    ``byte_budget`` (``None``: no limit).  A single layer is a group even when it does not
    fit (the capture then spills to disk, as in a serial run)."""
    n = len(dims)
    n_groups = max(1, min(int(n_groups), n))
    bounds = [round(i * n / n_groups) for i in range(n_groups + 1)]
    groups = []
    for start, stop in zip(bounds, bounds[1:]):
        current: list[int] = []
        for i in range(start, stop):
            if current and byte_budget is not None and _group_bytes(
                    current + [i], dims, x_dim, rows) > byte_budget:
                groups.append(current)
                current = []
            current.append(i)
        groups.append(current)
    return groups


def _group_bytes(group, dims, x_dim, rows) -> int:
    before = dims[group[0] - 1] if group[0] > 0 else 0
    return 4 * rows * (x_dim + before + sum(dims[i] for i in group))


def _scatter(client, value, what: str):
    try:
        return client.scatter([value], hash=False)[0]
    except Exception as exc:  # pickling errors come in many types
        raise InputTypeError(f"{what}: a {type(value).__name__} cannot be sent to the Dask workers "
                             f"({type(exc).__name__}: {exc}); give a data spec string or arrays, "
                             f"or a checkpoint path the workers can read") from exc


def _task_source(client, ckpt, ident: str, fp):
    """How a task finds its checkpoint: ``("path", name, resolved path)`` or, for a model in
    memory, ``("model", name, its scattered copy)``."""
    named = isinstance(ckpt, inputs_io.NamedCheckpoint)
    if named and ckpt.in_memory:
        # pickled here: Dask's own serializer for torch modules loses their hook registries
        try:
            payload = pickle.dumps(ckpt.source)
        except Exception as exc:  # pickling errors come in many types
            raise InputTypeError(f"checkpoints[{ckpt.name!r}]: the {type(ckpt.source).__name__} "
                                 f"cannot be sent to the Dask workers ({type(exc).__name__}: "
                                 f"{exc}); save it and give its path") from exc
        return ("model", ckpt.name, _scatter(client, payload, f"checkpoints[{ckpt.name!r}]"))
    path = ident if fp is not None else os.fspath(ckpt.source if named else ckpt)
    return ("path", ckpt.name if named else None, path)


def _capacity(client) -> tuple[int, int | None]:
    """Worker threads in the cluster, and a quarter of the smallest worker memory limit."""
    try:
        info = client.scheduler_info(n_workers=-1)  # newer versions list only 5 by default
    except TypeError:
        info = client.scheduler_info()
    info = info.get("workers", {})
    threads = sum(int(w.get("nthreads", 1)) for w in info.values())
    limits = [int(w.get("memory_limit") or 0) for w in info.values()]
    budget = min(limits) // 4 if limits and min(limits) > 0 else None
    return max(1, threads), budget


def _raise_or_warn(result: dict) -> dict:
    if "error" in result:  # a task's error every try would meet (see tasks.retried)
        exc = result["error"]
        if result.get("traceback"):
            exc.add_note(f"raised on a Dask worker:\n{result['traceback'].rstrip()}")
        raise exc
    for category, message in result.get("warnings", ()):
        warnings.warn(message, category, stacklevel=3)
    return result


def run_on_cluster(client, job: ClusterJob, ckpts, sources, labels, rows, done, out_dir,
                   flush_config, show=False) -> list[dict]:
    """Run the steps ``done`` lacks as tasks on ``client``'s cluster; add their rows to
    ``rows`` (and ``done``) and write them to ``out_dir`` as the serial loop of
    :func:`ibtools.analysis._analyze` does.  Interrupted (Ctrl-C, an error), it cancels what
    is still queued and raises; the journal keeps every step that came back."""
    from distributed import as_completed

    import pandas as pd

    idents = [ident for ident, _ in sources]
    data = job.data if isinstance(job.data, str) else _scatter(client, job.data, "data")
    job = dataclasses.replace(job, data=None, data_name=inputs_io.describe_data(job.data))
    slots, budget = _capacity(client)
    n_groups = math.ceil(slots / len(ckpts))

    def submit(*args):
        return client.submit(*args, pure=False, retries=RETRIES,
                             resources=task_resources(job.device))

    # with a checkpoint per worker thread or more, a task is a whole checkpoint, as serially;
    # with fewer, a plan task first finds the layers to split among the threads
    tasks, left, queue, calls = {}, {}, as_completed(), {}
    for i, (ckpt, (ident, fp)) in enumerate(zip(ckpts, sources)):
        label = labels.get(ident) or inputs_io.checkpoint_label(ckpt)
        calls[i] = (data, _task_source(client, ckpt, ident, fp), label, ident, fp)
        if n_groups > 1:
            future, left[i] = submit(_plan_task, job, *calls[i][:3]), None
        else:
            mine = {(layer, s, b) for c, layer, s, b in done if c == ident}
            future, left[i] = submit(_group_task, job, *calls[i], None, mine), 1
        tasks[future] = i
        queue.add(future)
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ckpts), desc="checkpoints", dynamic_ncols=True)
    try:
        for future in queue:
            i = tasks.pop(future)
            result = _raise_or_warn(future.result())
            if left[i] is None:  # a plan: submit the groups that have work
                left[i] = 0
                for entries, todo in _group_work(result, idents[i], job, done, n_groups, budget):
                    queue.add(f := submit(_group_task, job, *calls[i], entries, todo))
                    tasks[f] = i
                    left[i] += 1
            else:
                for new in result["steps"]:
                    _record(new, idents[i], rows, done, out_dir, flush_config)
                left[i] -= 1
            if left[i] == 0:  # the checkpoint is complete: the table, as after a serial one
                if out_dir is not None:
                    flush_config()
                    results_io.save_results(
                        pd.DataFrame(run_order(rows, idents, job.specs, job.betas)), out_dir)
                    results_io.clear_journal(out_dir)
                if bar is not None:
                    bar.update(1)
    except BaseException:
        client.cancel(list(tasks))
        raise
    finally:
        if bar is not None:
            bar.close()
    return rows


def _group_work(plan: dict, ident: str, job: ClusterJob, done, n_groups, budget):
    """``(entries, todo)`` per layer group with steps ``done`` lacks (see :func:`_group_task`)."""
    names = [name for name, _ in plan["layers"]]
    todo = {}
    for name in names:
        missing = [k for k, s in enumerate(job.specs)
                   if any((ident, name, s.label, b) not in done for b in job.betas)]
        if missing:
            todo[name] = missing
    split = not plan["whole"] and not any(n in _GROUP_WORDS for n in _module_names(names))
    groups = layer_groups([d for _, d in plan["layers"]], plan["x_dim"], job.max_samples,
                          n_groups if split else 1, budget if split else None)
    for group in groups:
        mine = {names[i]: todo[names[i]] for i in group if names[i] in todo}
        if mine:
            first = group[0]
            entries = [(i, names[i]) for i in ([first - 1] if first > 0 else []) + group]
            yield entries, mine


def _record(new: list[dict], ident: str, rows, done, out_dir, flush_config) -> None:
    for r in new:
        key = (ident, r["layer"], r["setting"], r["beta"])
        if key not in done:
            rows.append(r)
            done.add(key)
    if out_dir is not None:  # a journal line per step, as the serial loop writes them
        flush_config()
        results_io.append_journal(new, out_dir)
