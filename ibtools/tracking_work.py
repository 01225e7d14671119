"""The tracker's work apart from the training loop: the fixed probe set, the rows of one
captured measurement, and the worker process that computes them out of the loop.

:func:`estimate_rows` is the one function that turns a capture (the probe inputs, targets
and each layer's activations) into rows; the tracker calls it on the training thread
(``background=False``), in a worker thread (``background="thread"``) or in a worker process
(``background="process"``, :class:`ProcessEstimator`), so the three give the same rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time

import numpy as np
import torch

from ibtools.errors import InputError

__all__ = ["EstimationJob", "ProcessEstimator", "estimate_rows", "probe_set"]


def check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name}={value!r} is not accepted; use an integer >= {minimum}")
    return int(value)


def probe_set(probe_data, model, split, seed, max_samples, pool):
    """The fixed probe set as in-memory data: a seeded subset big enough for ``max_samples``
    rows, chosen once so every measurement sees the same samples."""
    from ibtools.probes.datasets import AnalysisData, as_analysis_data, load_dataset

    if isinstance(probe_data, str):
        data = load_dataset(probe_data, model=model, split=split, seed=seed)
    elif isinstance(probe_data, (list, tuple)) and len(probe_data) == 2:
        data = AnalysisData(*(torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor)
                              else a.detach().cpu() for a in probe_data), name="probe_data")
    else:
        data = as_analysis_data(probe_data, model=model)
    if not isinstance(data, AnalysisData):  # an iterable of batches: materialise it once
        xs, ys, seen = [], [], 0
        for inputs, targets in data.batches(64):
            xs.append(torch.as_tensor(inputs).detach().cpu())
            ys.append(torch.as_tensor(targets).detach().cpu())
            seen += xs[-1].shape[0] * (xs[-1].shape[1] if data.kind == "language" else 1)
            if seen >= 4 * max_samples:
                break
        if not xs:
            raise InputError("probe_data yielded no batches")
        data = AnalysisData(torch.cat(xs), torch.cat(ys), kind=data.kind, name=data.name)
    per_sample = (int(data.inputs.shape[1]) if data.kind == "language" and pool is None else 1)
    wanted = math.ceil(max_samples / per_sample)
    if data.n_samples > wanted:
        keep = np.sort(np.random.default_rng(seed).choice(data.n_samples, wanted, replace=False))
        keep = torch.as_tensor(keep)
        data = AnalysisData(data.inputs[keep], data.targets[keep], kind=data.kind,
                            name=data.name, meta=data.meta)
    return data


@dataclasses.dataclass(frozen=True)
class EstimationJob:
    """What the rows of a measurement depend on besides the capture: the estimator settings,
    and the fields of :class:`~ibtools.analysis_settings.AnalysisSettings` that
    :func:`~ibtools.layer_rows.layer_rows` reads (picklable, for a worker process)."""

    specs: tuple
    betas: tuple
    seed: int
    device: str
    ci: str | None
    reference: str


def estimate_rows(job: EstimationJob, x, y, layers, on_rows=None) -> list[dict]:
    """The rows of one capture: ``layers`` is a list of (name, activations) in forward order;
    each layer's previous one is the layer before it in the list (the input for the first).
    ``on_rows(rows)`` is called after each (layer, setting), e.g. to append to a journal."""
    from ibtools.layer_rows import layer_rows

    device = torch.device(job.device)
    new = []
    with torch.no_grad():
        for index, (name, t) in enumerate(layers):
            t_prev = x if index == 0 else layers[index - 1][1]
            for spec in job.specs:
                rows = layer_rows(spec, job, x, y, t, t_prev, index, device)
                for r in rows:
                    r.update(layer=name, layer_index=index)
                new += rows
                if on_rows is not None:
                    on_rows(rows)
    return new


def capture_arrays(acts) -> tuple:
    """A capture as plain numpy arrays (inputs, targets, [(layer, activations)]) for a worker
    process: pickled by value, so nothing refers to this process's memory maps."""
    def plain(t):
        return t.detach().cpu().numpy().copy()

    return plain(acts.x), plain(acts.y), [(name, plain(acts[name])) for name in acts.layers]


def _worker_init(threads, priority):
    """Runs once in the worker process: one torch thread (numba's kernels follow torch's
    count), a lower scheduling priority than training's, the estimators imported."""
    torch.set_num_threads(threads)
    if priority and hasattr(os, "nice"):
        os.nice(priority)
    import ibtools.layer_rows  # noqa: F401  (imports before the first measurement)


def _worker_warm(job: EstimationJob) -> float:
    """A small measurement of made-up data, so imports and compiled kernels are ready before
    the first real one; returns the CPU seconds it took."""
    start = time.process_time()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 4, generator=gen)
    with contextlib.suppress(Exception):  # a warm-up only: a real measurement reports errors
        estimate_rows(job, x, torch.arange(64) % 4, [("warm", torch.tanh(x @ x.T[:, :3]))])
    return time.process_time() - start


def _worker_rows(job: EstimationJob, x, y, layers) -> tuple[list[dict], float]:
    """In the worker process: the rows of a capture, and the CPU seconds they took."""
    start = time.process_time()
    tensors = [(name, torch.from_numpy(a)) for name, a in layers]
    rows = estimate_rows(job, torch.from_numpy(x), torch.from_numpy(y), tensors)
    return rows, time.process_time() - start


class ProcessEstimator:
    """One worker process (started with ``spawn``, so it shares no threads or locks with
    training) that computes the rows of captures sent to it.

    It starts at once and warms up (imports, compiled kernels) while training runs; it runs
    one torch thread at a lower priority (``os.nice(priority)``), so on a busy machine
    training goes first and measurements lag behind it instead of slowing it.
    :attr:`cpu_seconds` adds up the worker's CPU time spent on measurements.
    """

    def __init__(self, job: EstimationJob, threads: int = 1, priority: int = 5):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.job = job
        self.cpu_seconds = 0.0
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_worker_init,
                                         initargs=(threads, priority))
        self.warm = self._pool.submit(_worker_warm, job)

    def wait_ready(self) -> float:
        """Wait until the worker has started and warmed up; return its warm-up CPU seconds.
        A worker that could not start is a RuntimeError saying the usual reason."""
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self.warm.result()
        except BrokenProcessPool as exc:
            self.close()
            raise RuntimeError("background='process': the worker process could not start. "
                               "It is started with 'spawn', which imports the main script "
                               "again: a script must create the tracker (and train) under "
                               "`if __name__ == '__main__':`; or use background='thread'"
                               ) from exc

    def rows(self, arrays) -> list[dict]:
        """The rows of a capture given as :func:`capture_arrays`; waits for the worker."""
        rows, cpu = self._pool.submit(_worker_rows, self.job, *arrays).result()
        self.cpu_seconds += cpu
        return rows

    def close(self) -> None:
        """Stop the worker; results already delivered are all there is to wait for, so its
        exit (an interpreter with torch shutting down) is not waited for."""
        self._pool.shutdown(wait=False, cancel_futures=True)
