"""Capturing layer activations with forward hooks.

``capture_activations`` runs a model over analysis data with hooks on the chosen layers and
returns an :class:`~ibtools.probes.activations.Activations`: one ``(n, d)`` tensor per layer,
all on the same rows, with the inputs and targets of those rows.

Rows are samples (classification, or pooled sequences) or (sample, position) pairs (per-token
sequence rows).  A seeded reservoir over row ids (:mod:`ibtools.probes.reservoir`) picks at
most ``max_rows`` of them uniformly from the whole data stream; the decision is made once per
batch, before the forward pass, and every hook keeps exactly those rows, so all layers line
up.  Each hook copies its rows the moment it fires (advanced indexing always copies), so an
in-place operation later in the forward pass cannot change what was stored, and the full
batch activation is never kept.
"""

from __future__ import annotations

import shutil
import warnings
from contextlib import contextmanager

import torch
from torch import nn

from ibtools.errors import InputError, InputTypeError
from ibtools.estimators.base import parse_bytes
from ibtools.probes.activations import Activations
from ibtools.probes.datasets import as_analysis_data
from ibtools.probes.layers import primary_tensor, select_layers
from ibtools.probes.reservoir import RowReservoir
from ibtools.probes.storage import DiskRows, MemoryRows, check_spill_dir, make_spill_dir

POOLS = (None, "mean", "last")
STORE_DTYPES = (None, torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _model_device_dtype(model: nn.Module):
    for p in model.parameters():
        return p.device, (p.dtype if p.is_floating_point() else None)
    return torch.device("cpu"), None


@contextmanager
def hooked(modules: dict, hook_factory):
    """Register a forward hook on each module and remove every one on exit, also when the
    forward pass raises."""
    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook_factory(name)))
        yield
    finally:
        for h in handles:
            h.remove()


class _BatchContext:
    """What the hooks need to know about the batch in flight, and what they collected."""

    def __init__(self, kind: str, pool, store_dtype, reducer=None):
        self.kind, self.pool, self.store_dtype = kind, pool, store_dtype
        self.reducer = reducer
        self.batch = self.seq_len = 0
        self.select = None
        self.collected: list[tuple[str, torch.Tensor]] = []

    def rows(self, t: torch.Tensor, name: str) -> torch.Tensor:
        b = self.batch
        if t.ndim == 0 or t.shape[0] != b:
            raise InputError(f"layer {name!r} returned shape {tuple(t.shape)}, whose first axis is "
                             f"not the batch ({b}); choose another layer")
        if self.kind == "language":
            if t.ndim < 2 or t.shape[1] != self.seq_len:
                raise InputError(f"layer {name!r} returned shape {tuple(t.shape)}; per-token "
                                 f"capture needs (batch={b}, seq_len={self.seq_len}, ...)")
            if self.pool is None:
                return t.reshape(b * self.seq_len, -1)
            return (t.mean(dim=1) if self.pool == "mean" else t[:, -1]).reshape(b, -1)
        if self.pool is None or t.ndim == 2:
            return t.reshape(b, -1)
        if t.ndim == 3:  # (B, tokens, C): pool over tokens
            return t.mean(dim=1) if self.pool == "mean" else t[:, -1]
        if self.pool == "mean":  # (B, C, *spatial): global average over space
            return t.flatten(2).mean(dim=2)
        raise InputError(f"pool='last' is undefined for layer {name!r} of shape "
                         f"{tuple(t.shape)} (channels-first maps); use pool='mean' or None")

    def hook_for(self, name: str):
        def hook(module, args, output):
            t = primary_tensor(output, name).detach()
            if self.reducer is not None and self.kind != "language":
                t = self.reducer.spatial(t, name)  # pooling rules, before flattening
            rows = self.rows(t, name)
            if self.reducer is not None:
                rows = self.reducer.project(rows, name)
            kept = rows[self.select.to(rows.device)]  # advanced indexing: a private copy
            if self.store_dtype is not None and kept.is_floating_point():
                kept = kept.to(self.store_dtype)
            self.collected.append((name, kept))
        return hook


def capture_activations(model: nn.Module, data, layers=None, *, max_rows: int | None = None,
                        pool: str | None = None, seed: int = 0, device=None,
                        store_dtype: torch.dtype | None = None, store_device="cpu",
                        spill_dir=None, memory_budget=None, keep_spill: bool | None = None,
                        batch_size: int = 64, progress: bool = False,
                        reduce=None) -> Activations:
    """Run ``model`` over ``data`` and keep the activations of ``layers``.

    Parameters
    ----------
    model : nn.Module
        Put in eval mode for the capture (its mode is restored afterwards); runs under
        ``torch.no_grad``.
    data : AnalysisData, str, tuple or iterable
        What :func:`ibtools.probes.load_dataset` returns, a dataset spec string
        (``"digits"``, ``"text:PATH"``, ...), a tuple ``(inputs, targets)`` of tensors or
        arrays, or an iterable of ``(inputs, targets)`` batches.  Integer inputs (B, T) with
        targets of the same shape are language data (targets are the next-token ids).
    layers : see :func:`ibtools.probes.select_layers`
        Globs, names, module classes, ``"norms"``, ``"blocks"``, ``"leaves"``, ``"all"``, or a
        list.  ``None``: every block of the model.  A string prefixed ``fx:`` names a node
        of the model's ``torch.fx`` trace (``"fx:relu"``, ``"fx:max_pool2d_*"``), so
        functional ops are probed too (:mod:`ibtools.probes.fx_capture`).
    max_rows : int or None
        Cap on stored rows (the same rows for every layer), drawn uniformly from the whole
        stream by a seeded reservoir.  ``None`` keeps every row.
    pool : None, "mean" or "last"
        For sequences: ``None`` keeps one row per token; ``"mean"``/``"last"`` one row per
        sample.  For vision maps, ``"mean"`` averages tokens (B, N, C) or space (B, C, H, W).
    seed : int
        Seed of the row reservoir.
    device : None, str or torch.device
        Where the forward pass runs; ``None`` keeps the model where it is (the model is moved
        when a device is given).
    store_dtype : None, torch.float16, torch.bfloat16, torch.float32 or torch.float64
        Storage dtype of activations (``None``: as produced).
    store_device : str, torch.device or None
        Where stored rows live: ``"cpu"`` (default) or ``None`` for the compute device.
    spill_dir : str, Path or None
        Spill rows to disk under this directory (created if missing): each capture writes
        ``<index>.npy`` per layer into a new subdirectory of its own, ``capture-*``
        (recorded in ``settings["spill_dir"]``), and the result is memory-mapped from there.
        Captures sharing a ``spill_dir`` never see each other's rows, and files already in
        it are never touched.
    memory_budget : int, str or None
        RAM allowed for stored rows (``"512MiB"``).  When the capped (or known) number of rows
        would exceed it and no ``spill_dir`` is given, rows are spilled to a new temporary
        directory ``ibtools-activations-*`` (recorded in ``settings["spill_dir"]``).  The
        forward pass of one batch comes on top; lower ``batch_size`` to bound it.
    keep_spill : None or bool
        What happens to the spilled files when the result is closed (:meth:`Activations.close`
        or leaving its ``with`` block), garbage-collected, or the process exits.  ``None``:
        a temporary directory is removed, a subdirectory of a ``spill_dir`` you gave is kept
        (you chose where the files go, so they stay until you delete them).  ``True``: keep
        either.  ``False``: remove either.  A capture that fails removes its partial files.
    batch_size : int
        Samples per forward pass (ignored for data given as an iterable of batches).
    progress : bool
        Show a tqdm bar.
    reduce : None, str or dict
        Reduce conv maps or wide layers as the hooks fire (``"pool"``, ``"pool:max"``,
        ``"channels"``, ``"project:K"``, or ``{layer-glob: rule}``; see
        :mod:`ibtools.probes.reduce`); recorded in ``settings["reduction"]``.

    Returns
    -------
    Activations
        Layers in forward order; rows in stream order when held in memory, in reservoir-slot
        order when spilled (``sample_ids`` and ``positions`` always identify each row).

    Notes
    -----
    A module called several times in one forward pass yields one layer per call,
    ``name#0``, ``name#1``, ...  Hooks are registered just before the first forward pass
    and removed afterwards, also when the forward pass raises.  A forward pass that fails on
    the data (inputs of the wrong shape or type for the model) raises ValueError naming the
    model, the input shape and the module that failed.  Spilled files are checked before
    they are read: a file changed by something else is a ValueError, not a crash.
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if pool not in POOLS:
        raise InputError(f"pool={pool!r} is not accepted; use None, 'mean' or 'last'")
    if store_dtype not in STORE_DTYPES:
        raise InputError(f"store_dtype={store_dtype!r} is not accepted; use None, torch.float16, "
                         f"torch.bfloat16, torch.float32 or torch.float64")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size={batch_size!r} must be a positive int")
    budget = None if memory_budget is None else parse_bytes(memory_budget, "memory_budget")
    check_spill_dir(spill_dir)
    if keep_spill is not None and not isinstance(keep_spill, bool):
        raise InputTypeError(f"keep_spill={keep_spill!r} must be None, True or False")
    from ibtools.probes import fx_capture, reduce as reduce_mod

    reducer = None if reduce is None else reduce_mod.Reducer(reduce, seed)
    data = as_analysis_data(data, model=model)
    if device is not None:
        model.to(device)
    run_model, run_layers = fx_capture.prepare(model, layers)  # model itself without fx:
    names = select_layers(run_model, run_layers)
    modules = dict(run_model.named_modules())
    compute_device, param_dtype = _model_device_dtype(model)
    store_dev = compute_device if store_device is None else torch.device(store_device)

    reservoir = RowReservoir(max_rows, seed)
    ctx = _BatchContext(data.kind, pool, store_dtype, reducer)
    state = _Stores(data, ctx, max_rows, store_dev, spill_dir, budget, keep_spill)
    per_token = data.kind == "language" and pool is None
    was_training = model.training
    model.eval()
    run_model.eval()
    n_samples = 0
    batches = data.batches(batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="capture", unit="batch")
    try:
        with hooked({n: modules[n] for n in names}, ctx.hook_for), torch.no_grad():
            for inputs, targets in batches:
                inputs, targets = torch.as_tensor(inputs), torch.as_tensor(targets)
                ctx.batch = inputs.shape[0]
                ctx.seq_len = inputs.shape[1] if data.kind == "language" else 0
                n_rows = ctx.batch * ctx.seq_len if per_token else ctx.batch
                batch_index, slots = reservoir.offer(n_rows)
                ctx.select, ctx.collected = batch_index, []
                model_in = inputs.to(compute_device)
                if model_in.is_floating_point() and param_dtype is not None:
                    model_in = model_in.to(param_dtype)
                _forward(run_model, model_in, inputs, data)
                state.write(ctx.collected, names, inputs, targets, batch_index, slots,
                            n_samples)
                n_samples += ctx.batch
    except BaseException:
        state.close()
        raise
    finally:
        model.train(was_training)
    if reservoir.n_seen == 0:
        raise InputError("data yielded no rows; nothing was captured")
    settings = {
        "layers_spec": layers if layers is None or isinstance(layers, str) else repr(layers),
        "modules": names, "max_rows": max_rows, "pool": pool, "seed": seed,
        "device": str(compute_device), "store_dtype": store_dtype, "store_device": str(store_dev),
        "spill_dir": state.spill_dir, "memory_budget": budget, "batch_size": batch_size,
        "data": data.name, "kind": data.kind, "n_samples_seen": n_samples,
        "n_rows_seen": reservoir.n_seen, "n_rows": reservoir.n_kept,
        "sampled": max_rows is not None and reservoir.n_seen > max_rows,
        "rows": "per-token" if per_token else "per-sample",
        "reduction": None if reducer is None else reducer.record(names),
        "fx_traced": run_model is not model,
    }
    return state.finish(reservoir, settings)


def _forward(model: nn.Module, model_in: torch.Tensor, inputs: torch.Tensor, data):
    """``model(model_in)``, turning a RuntimeError or IndexError of the forward pass (for
    torch, nearly always data whose shape or type does not fit the model) into a ValueError
    that names the model, the data's shape and the failing module.

    On the CPU the pass runs on :func:`ibtools.estimators._jit.call_threads`'s count: fewer
    torch threads while other processes keep the cores busy (a thread waiting for a taken
    core makes every small op of a transformer cost a scheduler slice), the caller's count
    otherwise, restored afterwards (``IBTOOLS_THREADS=torch`` keeps it always)."""
    from ibtools.estimators._jit import call_threads

    try:
        if model_in.device.type == "cpu":
            with call_threads():
                model(model_in)
        else:
            model(model_in)
    except (RuntimeError, IndexError) as exc:
        if isinstance(exc, torch.OutOfMemoryError):
            raise
        where = _failing_module(model, model_in)
        layer = ("" if where is None else
                 f" in module {where or '(the model itself)'!r} "
                 f"({type(model.get_submodule(where)).__name__})")
        whole = getattr(data, "inputs", None)
        shape = (f"inputs of shape {tuple(whole.shape)}" if whole is not None
                 else f"a batch of shape {tuple(inputs.shape)}")
        raise InputError(f"model {type(model).__name__} failed on data {data.name!r} ({shape}, "
                         f"{inputs.dtype}){layer}: {exc}. Check that the data's shape and type "
                         f"fit the model") from exc


def _failing_module(model: nn.Module, model_in: torch.Tensor) -> str | None:
    """Name of the innermost module running when a forward pass raises (None if it does not
    raise again).  Only called after a failure, so the tracing costs nothing otherwise."""
    running: list[str] = []
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(
            lambda mod, args, name=name: running.append(name)))
        handles.append(module.register_forward_hook(
            lambda mod, args, out: running.pop() if running else None))
    try:
        model(model_in)
    except Exception:
        return running[-1] if running else None
    finally:
        for h in handles:
            h.remove()
    return None


class _Stores:
    """The row stores of one capture: one per layer call plus the aligned inputs/targets."""

    def __init__(self, data, ctx, max_rows, store_dev, spill_dir, budget, keep_spill):
        self.data, self.ctx, self.max_rows = data, ctx, max_rows
        self.store_dev = store_dev
        self.spill_root = spill_dir
        self.spill_dir = None  # this capture's own directory, once it spills
        self.remove_spill = (spill_dir is None) if keep_spill is None else not keep_spill
        self.budget = budget
        self.keys: list[tuple[str, int]] | None = None  # (module name, call index), forward order
        self.layer_stores: dict = {}
        self.aligned: dict = {}

    def _expected_rows(self):
        known = getattr(self.data, "n_rows", None)
        per_token = self.data.kind == "language" and self.ctx.pool is None
        total = None if known is None else known(per_token)
        if self.max_rows is None:
            return total
        return self.max_rows if total is None else min(self.max_rows, total)

    def _open(self, collected, inputs):
        calls: dict[str, int] = {}
        self.keys = []
        for name, _ in collected:
            self.keys.append((name, calls.get(name, 0)))
            calls[name] = calls.get(name, 0) + 1
        self.multi = {n for n, c in calls.items() if c > 1}
        rows = self._expected_rows()
        widths = [t.shape[1] * t.element_size() for _, t in collected]
        x_width = (inputs[0].numel() * 4) if self.data.kind != "language" else 0
        need = None if rows is None else rows * (sum(widths) + x_width)
        if self.spill_root is not None or (self.budget is not None
                                           and (need is None or need > self.budget)):
            self.spill_dir = make_spill_dir(self.spill_root)
        initial = rows if rows is not None else 1024

        def store(tag, dim, dtype, device):
            if self.spill_dir is not None:
                return DiskRows(f"{self.spill_dir}/{tag}.npy", dim, dtype)
            return MemoryRows(dim, dtype, device, initial)

        for i, (key, (_, t)) in enumerate(zip(self.keys, collected)):
            self.layer_stores[key] = store(f"{i:03d}", t.shape[1], t.dtype, self.store_dev)
        if self.data.kind != "language":
            self.aligned["x"] = store("x", inputs[0].numel(), torch.float32, "cpu")
        small = ["y", "sample_ids"]
        if self.data.kind == "language" and self.ctx.pool is None:
            small += ["positions", "tokens"]
        for k in small:  # a few int64 per row: always in memory
            self.aligned[k] = MemoryRows(1, torch.int64, "cpu", initial)

    def write(self, collected, names, inputs, targets, batch_index, slots, sample0):
        if self.keys is None:
            called = {n for n, _ in collected}
            unused = [n for n in names if n not in called]
            if unused:
                warnings.warn(f"layers {unused} were not called in the forward pass; they are "
                              f"left out", stacklevel=3)
            if not collected:
                raise InputError(f"none of the layers {names} was called in the forward pass")
            self._open(collected, inputs)
        calls: dict[str, int] = {}
        for name, t in collected:
            key = (name, calls.get(name, 0))
            calls[name] = key[1] + 1
            if key not in self.layer_stores:
                raise RuntimeError(f"layer {name!r} was called {calls[name]} times in this "
                                   f"batch but fewer times in the first; capture needs the same "
                                   f"calls in every forward pass")
            self.layer_stores[key].write(slots, t)
        if len(collected) != len(self.layer_stores):
            raise RuntimeError("the forward pass called the probed layers a different number of "
                               "times than in the first batch")
        b = inputs.shape[0]
        if self.data.kind == "language" and self.ctx.pool is None:
            t_len = inputs.shape[1]
            sample = sample0 + batch_index // t_len
            position = batch_index % t_len
            self._aligned(slots, y=targets.reshape(-1)[batch_index], sample_ids=sample,
                          positions=position, tokens=inputs.reshape(-1)[batch_index])
        elif self.data.kind == "language":
            self._aligned(slots, y=targets[:, -1][batch_index], sample_ids=sample0 + batch_index,
                          positions=None, tokens=None)
        else:
            self.aligned["x"].write(slots, inputs.reshape(b, -1)[batch_index].float())
            self._aligned(slots, y=targets.reshape(b, -1)[:, 0][batch_index],
                          sample_ids=sample0 + batch_index, positions=None, tokens=None)

    def _aligned(self, slots, **cols):
        for k, v in cols.items():
            if v is not None:
                self.aligned[k].write(slots, v.reshape(-1, 1).long().cpu())

    def finish(self, reservoir: RowReservoir, settings: dict) -> Activations:
        n = reservoir.n_kept
        spilled = self.spill_dir is not None
        rows = reservoir.kept_rows()
        order = None
        if not spilled and n > 1 and bool((rows[1:] < rows[:-1]).any()):
            order = torch.argsort(rows)
        layers = {}
        for (name, call), st in self.layer_stores.items():
            label = f"{name}#{call}" if name in self.multi else name
            layers[label] = st.finish(n, order)  # a FileStamp when spilled
        aligned = {k: st.finish(n, order) for k, st in self.aligned.items()}
        aligned = {k: (v if k == "x" else v.reshape(-1)) for k, v in aligned.items()}
        if self.data.kind == "language":
            # A context is identified by its row number in the stream: sample and position
            # for per-token rows, the sample for pooled ones.
            aligned["x"] = rows if order is None else rows[order]
        settings["spill_dir"] = self.spill_dir
        settings["row_order"] = "reservoir-slot" if spilled else "stream"
        return Activations(layers, kind=self.data.kind, settings=settings,
                           spill_dir=self.spill_dir, remove_spill=self.remove_spill,
                           **{k: aligned.get(k) for k in ("x", "y", "sample_ids", "positions",
                                                          "tokens")})

    def close(self) -> None:
        """After a failed capture: close the files and remove this capture's own directory
        (its rows are incomplete); nothing else under ``spill_dir`` is touched."""
        for st in list(self.layer_stores.values()) + list(self.aligned.values()):
            st.close()
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
