"""Information-bottleneck tracking during training.

>>> tracker = ibtools.track(model, "digits", every=20, out="ib-run")  # doctest: +SKIP
>>> for step, (x, y) in enumerate(loader):            # doctest: +SKIP
...     ...  # forward, backward, optimizer step
...     tracker.step(step)
>>> tracker.close()                                     # doctest: +SKIP

At every ``every``-th step the tracker captures the chosen layers on a fixed, seeded probe set
(the same rows each time), in eval mode and without gradients, and estimates I(X;T),
I(T_prev;T), I(T;Y) and the IB values exactly as :func:`ibtools.analyze` does for a checkpoint
(the same per-layer row function), so the table it writes is an ordinary results table with a
``step`` column and ``ibtools report DIR`` draws the information plane over training.

A measurement leaves training as it found it: the torch (CPU and CUDA), numpy and Python
random states, every module's train/eval flag and the grad-enabled state are restored, so a
run with tracking gives bit-identical weights to one without.  With ``background="process"``
(or ``"thread"``, also spelled ``True``) only the capture, one forward pass of the probe set,
runs on the training thread; the estimators run in a worker process (or thread), and
:meth:`Tracker.close` waits for them and writes the last rows.  A worker process shares
neither the GIL nor the torch RNG with training and runs at a lower priority, so on a machine
without a free core it is the measurements that wait, not training.
"""

from __future__ import annotations

import contextlib
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ibtools import results as results_io
from ibtools.errors import InputError, InputTypeError
from ibtools.estimators import get_estimator_class
from ibtools.estimators.spec import parse_estimator_specs
from ibtools.tracking_files import open_run_directory, tensorboard_writer
from ibtools.tracking_work import (
    EstimationJob,
    ProcessEstimator,
    capture_arrays,
    estimate_rows,
)
from ibtools.tracking_work import check_int as _check_int
from ibtools.tracking_work import probe_set as _probe_set
from ibtools.training_state import preserved_training_state

__all__ = ["DEFAULT_ESTIMATORS", "Tracker", "preserved_training_state", "track"]

#: Binning (30 bins) and KDE (noise_var 0.1), the two cheapest of analyze's defaults, without
#: the permutation check against independence: it reruns the estimate on shuffled labels
#: (up to one rerun per shuffle per layer) and matters less for a trend over training than for
#: one number.
DEFAULT_ESTIMATORS = ("binning:n_bins=30,n_permutations=0", "kde:noise_var=0.1,n_permutations=0")
#: Accepted values of ``background``: in the loop, a worker thread (True), a worker process.
_BACKGROUNDS = (False, True, "thread", "process")
#: Quantities exported to TensorBoard, per layer and estimator setting.
_SCALARS = ("i_xt", "i_ty", "i_prev_t", "ib_value")
#: Background measurements queued before :meth:`Tracker.step` waits for the oldest.
_MAX_PENDING = 4
#: Memory the captures queued for a worker process may take (see ``Tracker._max_pending``).
_PENDING_BYTES = 512 * 2**20

class Tracker:
    """Measures a model's layers every ``every`` steps; see :func:`track`.

    Attributes
    ----------
    table : pandas.DataFrame
        Every row finished so far (in background mode, measurements still running are not
        in it; :meth:`wait` waits for them).
    steps : list of int
        Steps measured (or queued) by this tracker, in order; rows of a resumed directory
        are in :attr:`table` but not here.
    """

    def __init__(self, model, probe_data, *, layers=None, estimators=None, every=20, out=None,
                 betas=(0.1,), seed=0, max_samples=1000, reference="input", pool=None, ci=None,
                 device=None, split="test", name=None, tensorboard=False, background=False,
                 overwrite=False, resume=False, batch_size=512, threads="auto"):
        from ibtools.probes.layers import select_layers

        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.every = _check_int(every, "every", 1)
        self.max_samples = _check_int(max_samples, "max_samples", 10)
        self.seed = _check_int(seed, "seed", 0)
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self._check_options(reference, pool, ci, estimators, background, betas)
        self.model, self.reference, self.pool, self.ci = model, reference, pool, ci
        self.layers = select_layers(model, layers)  # a bad layer name fails now, not at step 20
        self.device, self.threads = self._device_threads(model, device, threads)
        self.name = str(name) if name is not None else type(model).__name__
        self.data = _probe_set(probe_data, model, split, self.seed, self.max_samples, pool)
        self._base = self._base_columns(model)
        self.settings = {"probe_data": probe_data if isinstance(probe_data, str) else
                         f"{self.data.name} {tuple(self.data.inputs.shape)}",
                         "layers": self.layers, "estimators": [s.spec_string for s in self.specs],
                         "reference": reference, "max_samples": self.max_samples,
                         "seed": self.seed, "pool": pool, "ci": ci, "betas": self.betas,
                         "name": self.name, "every": self.every}
        self._job = EstimationJob(tuple(self.specs), tuple(self.betas), self.seed,
                                  str(self.device), ci, reference)
        self.steps: list[int] = []
        self._rows: list[dict] = []
        self._lock = threading.Lock()
        self._stack = contextlib.ExitStack()
        self._pending: list = []
        self._closed = False
        self._process = None
        self.out = None if out is None else Path(out)
        try:
            if self.out is not None:
                self._open_out(overwrite, resume)
            self._writer, self._own_writer = self._tensorboard(tensorboard)
            self._executor = (ThreadPoolExecutor(1, thread_name_prefix="ibtools-track")
                              if self.background else None)
            if self.background == "process":  # started and warmed up before training
                self._process = ProcessEstimator(self._job, threads=self.threads or 1)
                self._process.wait_ready()
        except BaseException:
            if self._process is not None:
                self._process.close()
            self._stack.close()
            raise

    # -- setup -----------------------------------------------------------------------------

    def _check_options(self, reference, pool, ci, estimators, background, betas):
        from ibtools.analysis import REFERENCES, _check_betas

        if reference not in REFERENCES:
            raise InputError(f"reference={reference!r} is not accepted; use one of "
                             f"{list(REFERENCES)}")
        if pool not in (None, "mean", "last"):
            raise InputError(f"pool={pool!r} is not accepted; use None, 'mean' or 'last'")
        if ci not in (None, "auto"):
            raise InputError(f"ci={ci!r} is not accepted; use None or 'auto'")
        if not any(background is b for b in _BACKGROUNDS):
            raise InputError(f"background={background!r} is not accepted; use False, "
                             f"'thread' (or True) or 'process'")
        self.background = "thread" if background is True else background
        self.specs = parse_estimator_specs(list(estimators) if estimators is not None
                                           else list(DEFAULT_ESTIMATORS))
        if not self.specs:
            raise InputError("estimators is empty; give at least one estimator spec")
        # estimators whose model initialisation forks the process-wide torch RNG: from a
        # worker thread that would race with the training thread's random draws
        risky = [s.method for s in self.specs if get_estimator_class(s.method).forks_global_rng]
        if self.background == "thread" and risky:
            raise InputError(f"background={background!r} cannot run {risky}: their model "
                             f"initialisation uses the process-wide torch RNG, which a worker "
                             f"thread would share with training; use background='process' "
                             f"or False for them")
        self.betas = _check_betas(betas)

    def _device_threads(self, model, device, threads):
        from ibtools.analysis import _resolve_device

        if device is None:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        device = _resolve_device(device)
        if threads == "auto":  # as in analyze: small problems run fastest on one thread
            threads = 1 if device.type == "cpu" and self.max_samples <= 4096 else None
        if threads is not None:
            threads = _check_int(threads, "threads", 1)
        return device, threads

    # -- setup -----------------------------------------------------------------------------

    def _base_columns(self, model):
        from ibtools.norms import describe_norms

        desc = describe_norms(model)
        lam = desc["lam"]
        if lam is None and desc["norm"] in ("layer", "rms", "batch"):
            lam = 0.0  # a plain norm is IBNorm's lam = 0 limit
        return {"model": self.name, "norm": desc["norm"],
                "lam": float(lam) if lam is not None else float("nan"), "seed": self.seed,
                "reference": self.reference, "unit": "nats",
                "ib_kind": "classic" if self.reference == "input" else "layerwise"}

    def _open_out(self, overwrite, resume):
        self._rows = open_run_directory(self.out, self._stack, self.settings, overwrite, resume)

    def _tensorboard(self, tensorboard):
        return tensorboard_writer(tensorboard, self.out)

    # -- measuring -------------------------------------------------------------------------

    def step(self, step, **metrics) -> bool:
        """Measure if ``step`` is a multiple of ``every``; return whether it was measured.

        ``metrics`` (numbers such as ``train_loss=...``) are stored in that step's rows.
        """
        step = _check_int(step, "step", 0)
        if step % self.every:
            self._raise_background_error()
            return False
        return self.measure(step, **metrics)

    def measure(self, step, **metrics) -> bool:
        """Measure now, whatever ``every`` says; a step already measured is skipped (False)."""
        from ibtools.probes import capture_activations

        step = _check_int(step, "step", 0)
        if self._closed:
            raise RuntimeError("the tracker is closed; create a new one with ibtools.track")
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise InputTypeError(f"metric {key}={value!r} is not accepted; metrics are numbers")
            if key in results_io.COLUMNS:
                raise InputError(f"metric name {key!r} is a results-table column; choose "
                                 f"another name (e.g. train_loss)")
        self._raise_background_error()
        with self._lock:
            if step in self.steps:
                return False
            self.steps.append(step)
        try:
            with preserved_training_state(self.model), self._threads():
                acts = capture_activations(self.model, self.data, self.layers,
                                           max_rows=self.max_samples, pool=self.pool,
                                           seed=self.seed, batch_size=self.batch_size)
                if self._executor is None:
                    self._estimate(acts, step, metrics)
                    return True
                if self._process is not None:  # plain arrays, for the worker process
                    with acts:
                        acts = capture_arrays(acts)
        except BaseException:
            with self._lock:
                self.steps.remove(step)
            raise
        while len(self._pending) >= self._max_pending(acts):  # bound the captures held
            self._pending.pop(0).result()
        work = self._estimate if self._process is None else self._estimate_in_process
        self._pending.append(self._executor.submit(work, acts, step, metrics))
        return True

    def _max_pending(self, capture) -> int:
        """Measurements that may queue: 4 captures for a worker thread; for the worker
        process (plain arrays, small for the models tracking is meant for) as many as fit
        :data:`_PENDING_BYTES`, at least 4 and at most 64, so training waits only for a
        worker far behind."""
        if self._process is None:
            return _MAX_PENDING
        size = capture[0].nbytes + capture[1].nbytes + sum(a.nbytes for _, a in capture[2])
        return max(_MAX_PENDING, min(64, _PENDING_BYTES // max(size, 1)))

    @contextlib.contextmanager
    def _threads(self):
        """torch's intra-op threads for a foreground measurement, restored afterwards; a
        background one leaves them alone (the setting is process-wide, training's too)."""
        previous = torch.get_num_threads()
        change = self._executor is None and self.threads is not None
        if change:
            torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            if change:
                torch.set_num_threads(previous)

    def _estimate(self, acts, step, metrics):
        """The rows of a capture, computed here (the training thread or the worker thread),
        each (layer, setting) journalled as it finishes."""
        base = dict(self._base, checkpoint=f"{self.name}@step{step}", step=step, **metrics)

        def journal(rows):
            for r in rows:
                r.update(base)
            if self.out is not None:  # an interruption loses at most this estimate
                results_io.append_journal(rows, self.out)

        with acts:
            new = estimate_rows(self._job, acts.x, acts.y,
                                [(name, acts[name]) for name in acts.layers], journal)
        self._record(step, new)

    def _estimate_in_process(self, arrays, step, metrics):
        """The rows of a capture (plain arrays) from the worker process; this worker thread
        only waits for them and writes them."""
        new = self._process.rows(arrays)
        base = dict(self._base, checkpoint=f"{self.name}@step{step}", step=step, **metrics)
        for r in new:
            r.update(base)
        if self.out is not None:
            results_io.append_journal(new, self.out)
        self._record(step, new)

    @property
    def worker_cpu_seconds(self) -> float | None:
        """CPU seconds the worker process spent on measurements so far (``None`` unless
        ``background="process"``)."""
        return None if self._process is None else self._process.cpu_seconds

    def _record(self, step, new):
        with self._lock:
            # a resumed run measuring a step again replaces that step's old rows
            self._rows = [r for r in self._rows if r.get("step") != step] + new
            if self.out is not None:
                if not (self.out / results_io.CONFIG_JSON).exists():
                    self._save_config()
                results_io.save_results(pd.DataFrame(self._rows), self.out)
                results_io.clear_journal(self.out)
        if self._writer is not None:
            several = len(self.betas) > 1
            for r in new:
                for q in _SCALARS:
                    if q != "ib_value" and r["beta"] != self.betas[0]:
                        continue
                    tag = f"ib/{r['setting']}/{r['layer']}/{q}"
                    if q == "ib_value" and several:
                        tag += f"/beta={r['beta']:g}"
                    if math.isfinite(r[q]):
                        self._writer.add_scalar(tag, r[q], global_step=step)

    def _save_config(self):
        import ibtools
        from ibtools.environment import describe_environment

        results_io.save_config({"ibtools_version": ibtools.__version__,
                                "torch_version": torch.__version__, "device": str(self.device),
                                "tracking": True, "settings": self.settings,
                                "betas": self.betas,
                                "environment": describe_environment(self.device)}, self.out)

    def _raise_background_error(self):
        for future in list(self._pending):
            if future.done():
                self._pending.remove(future)
                future.result()  # re-raises the worker's exception here, on the training thread

    # -- results and shutdown --------------------------------------------------------------

    def wait(self) -> None:
        """Wait for background measurements in flight (re-raising their errors)."""
        while self._pending:
            self._pending.pop(0).result()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run (a closed tracker measures nothing more)."""
        return self._closed

    @property
    def table(self) -> pd.DataFrame:
        with self._lock:
            if not self._rows:
                return pd.DataFrame(columns=results_io.COLUMNS)
            return results_io.order_columns(pd.DataFrame(self._rows))

    def close(self) -> pd.DataFrame:
        """Wait for background work, write the final table, release the run directory and
        return the table."""
        if self._closed:
            return self.table
        try:
            self.wait()
        finally:
            self._closed = True
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            if self._process is not None:
                self._process.close()
            if self._writer is not None:
                self._writer.flush()
                if self._own_writer:
                    self._writer.close()
            self._stack.close()
        return self.table

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self) -> str:
        return (f"Tracker({self.name}, every={self.every}, layers={self.layers}, "
                f"estimators={[s.label for s in self.specs]}, steps measured={len(self.steps)}, "
                f"out={None if self.out is None else str(self.out)!r})")


def track(model, probe_data, layers=None, estimators=None, every=20, out=None, betas=(0.1,),
          seed=0, **kwargs) -> Tracker:
    """Track I(X;T), I(T_prev;T), I(T;Y) and IB values of ``model``'s layers during training.

    Parameters
    ----------
    model : nn.Module
        The model being trained (measured in place; nothing about it is changed).
    probe_data : str, tuple or iterable
        A dataset spec :func:`ibtools.analyze` accepts (``"digits"``, ``"text:PATH"``,
        ``"npz:PATH"``, ...), a pair ``(inputs, targets)`` of tensors or arrays, or an
        iterable of ``(inputs, targets)`` batches (read once).  A seeded subset of it, fixed
        at creation, is the probe set of every measurement.
    layers : see :func:`ibtools.probes.select_layers`
        ``None``: every block of the model.
    estimators : list of spec, optional
        Estimator specs as in :func:`ibtools.analyze`; default :data:`DEFAULT_ESTIMATORS`,
        binning (30 bins) and KDE (noise_var 0.1) without the permutation check.
    every : int
        :meth:`Tracker.step` measures when ``step % every == 0``.
    out : path, optional
        Run directory: ``results.csv``/``.json`` rewritten atomically after each
        measurement, the journal while one is in progress, ``config.json``; locked while the
        tracker is open.  ``None`` keeps the rows in memory (:attr:`Tracker.table`).
    betas : float or list of float
        IB trade-off weights; one row per beta.
    seed : int
        Seeds the probe subset and every estimator.
    **kwargs
        ``max_samples`` (rows per measurement, default 1000), ``reference`` (``"input"`` or
        ``"previous"``), ``pool``, ``ci``, ``split`` (of a named dataset, default
        ``"test"``), ``device`` (of the estimators; default the model's), ``name`` (the
        ``model`` column; default the class name), ``tensorboard`` (True: a SummaryWriter in
        ``out/tensorboard``, or your own writer; scalars ``ib/<setting>/<layer>/<quantity>``
        at each step), ``background`` (``"process"``: the estimators run in a worker
        process started with the tracker; ``"thread"`` or True: in a worker thread; at most
        four measurements queue (for the process, up to 64 within 512 MiB) before
        :meth:`Tracker.step` waits), ``overwrite``/``resume``
        (what to do with results already in ``out``), ``batch_size`` (probe forward pass),
        ``threads`` (torch threads during a foreground measurement, restored afterwards;
        ``"auto"``: 1 on a CPU for up to 4096 rows, as :func:`ibtools.analyze` does).

    Returns
    -------
    Tracker
        Call ``tracker.step(step)`` after each optimizer step and ``tracker.close()`` (or use
        it as a context manager) at the end.
    """
    return Tracker(model, probe_data, layers=layers, estimators=estimators, every=every, out=out,
                   betas=betas, seed=seed, **kwargs)
