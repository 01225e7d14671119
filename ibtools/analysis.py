"""Checkpoints + data + layers + estimators -> the tidy results table.

>>> table = ibtools.analyze(["run/step_000100.pt", "run/step_000200.pt"], data="digits",
...                         estimators=["binning:n_bins=30", "kde:noise_var=0.1"], betas=[0.1])

Each checkpoint's activations are captured once and fed to every estimator setting.  For
every layer T_l it estimates I(X;T_l), I(T_{l-1};T_l) (T_0 = X) and I(T_l;Y) and the IB
values I(T;Y) - beta * I(X;T) (``reference="input"``, the classic IB) or
I(T_l;Y) - beta * I(T_{l-1};T_l) (``reference="previous"``, IBNorm's layer-wise objective).
With ``out_dir`` every finished (layer, estimator) step is appended to a journal and the table
is rewritten atomically after every checkpoint, so an interruption loses at most the step in
progress, and a rerun into the same directory skips what is already there.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pandas as pd
import torch

from ibtools import inputs as inputs_io
from ibtools import noise_channel, noisy, run_directory
from ibtools import results as results_io
from ibtools.analysis_settings import (  # noqa: F401 - public names of the pipeline
    DEFAULT_ESTIMATORS,
    DEFAULT_NOISE_PATHS,
    REFERENCES,
    AnalysisSettings,
    _check_betas,
)
from ibtools.errors import InputError, ResourceExceeded
from ibtools.estimators.spec import parse_estimator_specs  # noqa: F401 - importable from here
from ibtools.layer_rows import (  # noqa: F401 - public names of the pipeline
    ESTIMATOR_FAILURES,
    EstimatorFailedWarning,
)
from ibtools.layer_rows import layer_rows as _layer_rows

#: Settings whose change makes old rows incomparable (a resume with others is refused).
_RUN_KEYS = ("arch", "data", "layers", "estimators", "reference", "max_samples", "seed",
             "pool", "ci", "split", "noise_std", "reduce", "noise_paths")
#: Run keys that older config.json files lack, read as the value those runs used.
_RUN_KEY_DEFAULTS = {"noise_paths": DEFAULT_NOISE_PATHS}


def _resolve_device(device):
    """``None``/``"auto"``: CUDA when available; otherwise the estimators' own device check,
    so a name torch cannot parse ('banana') is a ValueError naming the value, not torch's
    RuntimeError (which the CLI would report as a failure rather than a user error)."""
    from ibtools.estimators.base import resolve_device

    if device is None:
        device = "auto"
    return resolve_device(device)


def _progress(iterable, desc, enabled, total=None, leave=False):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True)


def analyze(checkpoints, arch=None, data="digits", layers=None, estimators=None, betas=(0.1,),
            reference="input", max_samples=2000, device="auto", seed=0, pool=None, ci=None,
            split="test", out_dir=None, overwrite=False, progress=None, arch_kwargs=None,
            trust_pickle=False, threads="auto", lock_timeout=None, trust_code=False,
            memory_budget="auto", spill_dir=None, batch_size=64, strict=True, executor=None,
            noise_std=None, reduce=None, noise_paths=DEFAULT_NOISE_PATHS,
            noise_scale="absolute"):
    """Estimate information quantities of chosen layers of one or more checkpoints.

    Parameters
    ----------
    checkpoints : path, model, list of them, or dict of named ones
        Checkpoint files (any format :func:`ibtools.probes.load_model` reads) or
        ``nn.Module`` objects already in memory.  A dict ``{"layernorm": m1, "ib-S": m2}``
        names them; models in a list are named by their class, made unique
        (``GPT2LMHeadModel``, ``GPT2LMHeadModel-2``).  The name is the rows' ``checkpoint``
        and ``model``, so two models of one class are never merged (see
        :mod:`ibtools.inputs`).
    arch : str, optional
        Architecture for plain state_dicts (``"ibtools:mlp"``, ``"package.module:factory"``,
        ``"hf:DIR"``); ibtools checkpoints carry their own.
    data : str, tuple or iterable
        Data source (``"digits"``, ``"text:PATH"``, ``"npz:PATH"``, ``"package.module:fn"``),
        a tuple ``(inputs, targets)`` of tensors or arrays, or a DataLoader (any re-iterable
        of ``(inputs, targets)`` batches), as :func:`ibtools.capture_activations` takes.
        ``split`` applies to spec strings only.
    layers : str, list or None
        Layer names, dotted globs (``"blocks.*.ln_1"``), module types or the groups
        ``"norms"`` / ``"blocks"`` (see :mod:`ibtools.probes.layers`); ``None`` picks every
        block output (the items of the model's ``nn.ModuleList``).  ``"fx:NAME"`` (globs too)
        names a node of the model's ``torch.fx`` trace, so functional ops (``F.relu``,
        ``F.max_pool2d``) are probed as well (:mod:`ibtools.probes.fx_capture`).
    estimators : list of spec
        Estimator specs (``"kde:noise_var=0.1"``, dicts, or ``EstimatorSpec``); a sweep is
        several specs.  Default: binning (30 bins), KDE (noise_var 0.1), KSG (k 3, copula).
    betas : float or list of float
        Trade-off weights; one row per beta.
    reference : "input" or "previous"
        What IB values compress against: I(X;T) (classic IB) or I(T_{l-1};T_l).
    max_samples : int
        Rows per layer (a seeded sample over the whole data; tokens for language models).
    device : "auto", "cpu", "cuda[:N]"
        Where the model runs and the estimators compute.
    seed : int
        Seeds sampling and every estimator.
    pool : None, "mean" or "last"
        Pool token rows of sequence models into one row per sequence.
    ci : None or "auto"
        Ask each estimator for its interval (kNN: subsampling, plug-in: bootstrap).
    out_dir : path, optional
        Write results.csv/json and config.json there after every step; resume from them.
        The directory is locked while the run writes: a second run into it waits and then
        adds its rows.  A resume recognises a checkpoint by its resolved path and content
        (see :mod:`ibtools.run_directory`): the same file under another name is not analysed
        again, a file replaced in place is, and rows that do not fit this run's settings are
        dropped with a warning naming file and line.
    overwrite : bool
        Replace results of different settings found in ``out_dir`` instead of refusing.
    progress : bool or None
        Progress bars; ``None`` shows them on a terminal and in a Jupyter notebook (as
        notebook widgets, through ``tqdm.auto``).
    arch_kwargs : dict, optional
        Keyword arguments for the architecture factory.
    trust_pickle : bool
        Allow checkpoints that are whole pickled modules (this runs code from the file;
        only for files you trust).
    trust_code : bool
        Let a checkpoint's stored architecture name any importable factory; without it a
        file may name only ibtools' own models (see :func:`ibtools.probes.load_model`).
        Giving ``arch`` yourself needs no such trust.  Only for files you trust.
    threads : "auto", int or None
        torch intra-op threads on CPU while the analysis runs (restored afterwards).
        ``"auto"`` uses 1 when ``max_samples <= 4096``: the per-layer problems are then small
        and thread synchronisation costs more than it saves, while larger pairwise matmuls
        gain from every core (measurements in ``benchmarks/RESULTS.md``); ``None`` keeps
        torch's setting.
    lock_timeout : float or None
        Seconds to wait when another run holds ``out_dir``: ``None`` waits until it is done,
        ``0`` refuses at once (:class:`ibtools.run_directory.RunDirectoryBusyError` naming
        the holder's pid and host).

    memory_budget : "auto", int, str or None
        RAM the captured activations of one checkpoint may take (``"2GiB"``); above it they
        are spilled to disk and memory-mapped.  ``"auto"``: a quarter of the machine's RAM;
        ``None``: keep everything in memory.
    spill_dir : path, optional
        Spill activations under this directory always (a temporary directory otherwise, and
        only when over ``memory_budget``); each capture's files are removed when its
        checkpoint is done.
    batch_size : int
        Samples per forward pass of the capture (lower it to bound the forward pass's memory).
    strict : bool
        Refuse a checkpoint whose keys do not all match the architecture; ``False`` loads what
        matches and warns, naming the keys left out (tied weights a file does not store).
    executor : dask.distributed.Client or None
        Run the (checkpoint, layer group) captures and their estimates as tasks on a Dask
        cluster; this process alone writes ``out_dir`` and the table equals the serial one
        (see :mod:`ibtools.distributed`; needs ``pip install 'ibtools[dask]'``).  ``None``
        runs everything here.
    noise_std : float, list of float or None
        Read every measured layer of the unchanged network through a Gaussian channel
        ``T + Z``, ``Z ~ N(0, S^2 I)``, once per S (a sweep): I(X;T) is then finite at S
        instead of ln n (see :mod:`ibtools.noise_channel`).  ``mixture`` and ``kde`` take
        ``noise_var = S^2`` (their mixture is that channel), other estimators get seeded
        sampled noise; I(T_prev;T) is the noisy chain.  Rows carry ``mode``
        (``"deterministic"``, ``"analysis-noise"``, ``"trained-noise"``) and ``noise_std``;
        a model trained with noise (``noise_std`` in its config) is measured as a noisy
        network, the mixture estimator's I(X;T) from noise paths per input
        (:func:`ibtools.noisy.noisy_network_information`), and refuses this channel on top.
    noise_scale : "absolute" or "layer"
        The units of ``noise_std``: the layer's own (default), or its scale on the sample
        (``"layer"``: each layer is divided by its root-mean-square coordinate deviation
        before the channel, so a layer and any multiple of it read alike; settings are
        labelled ``@noise_rel=S``).  Two networks whose layers differ in scale only are
        compared on equal terms only this way.
    noise_paths : int
        Noise paths per input (K >= 2, default 8) from which a network trained with noise has
        h(T_l|X) estimated; recorded in config.json.
    reduce : None, str or dict
        Reduce conv maps and wide layers as they are captured: ``"pool"`` (global average
        over space, one value per channel), ``"pool:max"``, ``"channels"`` (average over
        channels per position), ``"project:K"`` (a seeded Gaussian random projection to K
        dimensions), or ``{layer-glob: rule}`` (see :mod:`ibtools.probes.reduce`).  Each
        row's rule is in the ``reduction`` column.  For the resolution of binning and KDE
        on such layers, ``binning:bin_width=auto`` and ``kde:noise_var=auto`` choose it from
        the data (:mod:`ibtools.estimators.resolution`; the values used are in the
        ``resolution`` column).

    Returns
    -------
    pandas.DataFrame
        The results table (``ibtools.results.COLUMNS`` plus model metrics from the checkpoint
        metadata), in nats.  An estimator that fails on one layer leaves NaN in that row with
        a flag, and an :class:`EstimatorFailedWarning` naming checkpoint, layer and setting;
        the run goes on.  An argument that is not accepted raises a ``ValueError`` or
        ``TypeError`` naming it (:class:`ibtools.errors.InputError` for the settings checked
        by :class:`~ibtools.analysis_settings.AnalysisSettings`).
    """
    ckpts = inputs_io.normalize_checkpoints(checkpoints)
    settings = AnalysisSettings.from_arguments(
        estimators=estimators, betas=betas, reference=reference, max_samples=max_samples,
        seed=seed, pool=pool, ci=ci, split=split, arch=arch, data=data, layers=layers,
        arch_kwargs=arch_kwargs, trust_pickle=trust_pickle, trust_code=trust_code,
        strict=strict, threads=threads, noise_std=noise_std, noise_paths=noise_paths,
        memory_budget=memory_budget, spill_dir=spill_dir, batch_size=batch_size, reduce=reduce,
        noise_scale=noise_scale)
    if executor is not None:  # workers resolve "auto" and check CUDA on their own machines
        from ibtools import distributed

        dev = distributed.check_executor(executor, device)
    else:
        dev = _resolve_device(device)
    threads = settings.threads_on(dev)  # a worker applies "auto" to the device it resolves
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with (run_directory.run_directory_lock(out_dir, lock_timeout) if out_dir is not None
              else contextlib.nullcontext()):
            return _analyze(ckpts, settings, data, dev, out_dir=out_dir, overwrite=overwrite,
                            show=inputs_io.show_progress(progress), executor=executor)
    finally:
        torch.set_num_threads(previous_threads)


def _analyze(ckpts, settings: AnalysisSettings, data, dev, out_dir=None, overwrite=False,
             show=False, executor=None):
    record = settings.record()
    rows, old_config = (_open_run_dir(out_dir, record, overwrite, settings.specs)
                        if out_dir is not None else ([], None))
    sources = [inputs_io.checkpoint_source(c) for c in ckpts]
    rows, labels = run_directory.reconcile(rows, ckpts, sources)
    done = {(run_directory.row_identity(r), str(r["layer"]), str(r["setting"]), float(r["beta"]))
            for r in rows}
    # config.json is written with the first result, so a run that fails before it (a bad
    # layer name) leaves nothing that would block the corrected rerun
    pending_config = [_config(record, ckpts, settings.betas, dev, old_config)]
    if executor is not None:  # the loop below, as tasks on a Dask cluster
        from ibtools import distributed

        distributed.run_on_cluster(executor, distributed.ClusterJob(settings, str(dev), data),
                                   ckpts, sources, labels, rows, done, out_dir,
                                   lambda: _flush_config(pending_config, out_dir), show)
    serial = list(zip(ckpts, sources)) if executor is None else []
    for ckpt, (ident, fp) in _progress(serial, "checkpoints", show and len(ckpts) > 1,
                                       leave=True):
        label = labels.get(ident) or inputs_io.checkpoint_label(ckpt)

        def wanted(name, spec, ident=ident):
            return any((ident, name, spec.label, b) not in done for b in settings.betas)

        for new in _checkpoint_steps(settings, data, ckpt, (label, ident, fp), dev, wanted,
                                     show):
            for r in new:
                key = (ident, r["layer"], r["setting"], r["beta"])
                if key not in done:
                    rows.append(r)
                    done.add(key)
            if out_dir is not None:  # a journal line per step; Ctrl-C loses one step
                _flush_config(pending_config, out_dir)
                results_io.append_journal(new, out_dir)
        if out_dir is not None:
            _flush_config(pending_config, out_dir)
            results_io.save_results(pd.DataFrame(rows), out_dir)
            results_io.clear_journal(out_dir)
    # rows resumed from a cluster's journal (finished in any order) take the serial order
    from ibtools.distributed import run_order

    rows = noise_channel.label_modes(run_order(rows, [ident for ident, _ in sources],
                                               settings.specs, settings.betas))
    table = results_io.order_columns(pd.DataFrame(rows)) if rows else pd.DataFrame(
        columns=results_io.COLUMNS)
    if out_dir is not None:
        _flush_config(pending_config, out_dir)
        results_io.save_results(table, out_dir)
        results_io.clear_journal(out_dir)
    return table


def _checkpoint_steps(settings: AnalysisSettings, data, ckpt, names, dev, wanted, show=False):
    """Load and capture one checkpoint (``names``: its label, identity and fingerprint) and
    yield the rows of each (layer, setting) step ``wanted(layer, spec)`` asks for."""
    from ibtools.probes import load_model

    model, info = inputs_io.open_checkpoint(ckpt, load_model, arch=settings.arch,
                                            trust_pickle=settings.trust_pickle,
                                            trust_code=settings.trust_code,
                                            strict=settings.strict, **(settings.arch_kwargs or {}))
    model = model.to(dev).eval()
    base, trained_std, dataset, acts = prepare_checkpoint(settings, data, model, info, names,
                                                          dev)
    with acts:  # spilled files go when the checkpoint is done, not when the GC gets to them
        yield from layer_steps(settings, model, dataset, acts, base,
                               list(enumerate(acts.layers)), wanted, trained_std, dev, show)


def prepare_checkpoint(settings: AnalysisSettings, data, model, info, names, dev, layers=None):
    """``(base, trained_std, dataset, acts)`` of a loaded model: the rows' shared columns, its
    train-time noise std (refusing an analysis-time channel on top), the data and the capture
    of ``layers`` (default: the run's).  The serial loop's and a Dask task's."""
    from ibtools.probes import capture_activations

    label, ident, fp = names
    base = _row_base(model, info, label, ident, fp, settings.seed, settings.reference)
    trained_std = noisy.check_single_channel(model, settings.specs, label)
    dataset = inputs_io.resolve_data(data, model=model, split=settings.split, seed=settings.seed)
    acts = _capture(capture_activations, model, dataset, settings.data_name,
                    layers=settings.layers if layers is None else layers,
                    max_rows=settings.max_samples, pool=settings.pool, seed=settings.seed,
                    device=dev, **settings.capture_options)
    return base, trained_std, dataset, acts


def layer_steps(settings: AnalysisSettings, model, dataset, acts, base, entries, wanted,
                trained_std, dev, show=False):
    """The rows of each wanted (layer, setting) step of captured activations, one list per
    step: the serial loop's and a Dask task's.  ``entries`` are ``(index, name)`` of the
    captured layers in forward order (a layer's T_prev is entry ``index - 1``), ``base`` the
    checkpoint's shared columns, ``trained_std`` its train-time noise (the mixture rows of a
    noisy network come from noise paths over all ``entries``)."""
    names = dict(entries)
    paths = noisy.checkpoint_paths(model, dataset, acts.x, acts.y, list(names.values()),
                                   settings.specs, settings.seed, trained_std,
                                   tokens=(acts.sample_ids, acts.positions),
                                   n_paths=settings.noise_paths)
    for index, name in _progress(entries, "layers", show):
        todo = [s for s in settings.specs if wanted(name, s)]
        for spec in _progress(todo, name, show and bool(todo)):
            t_prev = acts.x if index == 0 else acts[names[index - 1]]
            new = _layer_rows(spec, settings, acts.x, acts.y, acts[name], t_prev, index, dev,
                              where=f"checkpoint {base['checkpoint']!r}, layer {name!r}, "
                                    f"{spec.label}", paths=noisy.layer_paths(paths, spec, name))
            for r in new:
                r.update(base, layer=name, layer_index=index, reduction=_reduction(acts, name))
            yield noise_channel.label_modes(new)


def _row_base(model, info, label, ident, fp, seed, reference) -> dict:
    """The columns every row of one checkpoint shares: its name and source, its norm and
    lam (from the checkpoint's metadata, else read off the model), seed, step and metrics."""
    meta = dict(info.get("meta") or {})
    norm, lam = meta.get("norm"), meta.get("lam")
    if norm is None:
        from ibtools.norms import describe_norms

        desc = describe_norms(model)
        norm, lam = desc["norm"], desc["lam"] if lam is None else lam
    if lam is None and norm in ("layer", "rms", "batch"):
        lam = 0.0  # a plain norm is IBNorm's lam = 0 limit
    base = {"checkpoint": label, "checkpoint_path": ident if fp is not None else None,
            "checkpoint_fingerprint": fp, "model": info.get("arch"), "norm": norm,
            "lam": float(lam) if lam is not None else float("nan"),
            "seed": meta.get("seed", seed), "step": meta.get("step", meta.get("epoch")),
            "reference": reference,
            "ib_kind": "classic" if reference == "input" else "layerwise", "unit": "nats",
            "noise_std": noisy.model_noise_std(model) or 0.0}
    base.update({k: meta[k] for k in ("test_accuracy", "val_loss", "train_loss", "epoch")
                 if k in meta})
    return base


def _reduction(acts, name) -> str:
    """The reduction rule the capture applied to layer ``name`` (``"none"`` without one)."""
    record = acts.settings.get("reduction") or {}
    return record.get(name.split("#")[0], "none")


def _capture(capture_activations, model, dataset, data, **kwargs):
    """Capture, turning a forward pass that fails on the data into a user error with shapes,
    and running out of device memory into :class:`~ibtools.errors.ResourceExceeded`."""
    try:
        return capture_activations(model, dataset, **kwargs)
    except torch.OutOfMemoryError as exc:
        raise ResourceExceeded(f"capturing the activations of {type(model).__name__} ran out "
                               f"of memory on {kwargs.get('device')} ({exc}); lower batch_size "
                               f"(now {kwargs.get('batch_size')}) or max_samples (now "
                               f"{kwargs.get('max_rows')}), or use another device") from exc
    except RuntimeError as exc:
        inputs = getattr(dataset, "inputs", None)
        shape = "" if inputs is None else f" of shape {tuple(inputs.shape)} ({inputs.dtype})"
        raise InputError(f"data {data!r} gives inputs{shape} that the model "
                         f"({type(model).__name__}) cannot take: {exc}. Use data that matches "
                         f"the architecture (digits for vision models, text:PATH for language "
                         f"models)") from exc


def _config(settings, ckpts, betas, device, old=None):
    import ibtools

    # a resumed or shared directory lists every checkpoint its table holds
    names = list((old or {}).get("checkpoints") or [])
    names += [c for c in (c if isinstance(c, str) else str(c) for c in ckpts) if c not in names]
    from ibtools.environment import describe_environment

    return {"ibtools_version": ibtools.__version__, "torch_version": torch.__version__,
            "device": str(device), "checkpoints": names, "betas": betas, "settings": settings,
            "environment": describe_environment(device)}


def _flush_config(pending, out_dir):
    """Write the run's config.json once, with its first result."""
    if pending:
        results_io.save_config(pending.pop(), out_dir)


def _open_run_dir(out_dir, settings, overwrite, specs):
    """The rows to resume from and the old config (or ``([], None)``), refusing a directory
    whose rows come from other settings."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"out_dir={str(out)!r} exists and is not a directory")
    if overwrite:
        for name in (results_io.RESULTS_CSV, results_io.RESULTS_JSON, results_io.RESULTS_PARQUET,
                     results_io.RESULTS_JOURNAL):
            (out / name).unlink(missing_ok=True)
        return [], None
    if not (out / results_io.RESULTS_CSV).exists() and not (out / results_io.RESULTS_JOURNAL).exists():
        return [], None  # a config.json without rows (a failed run) protects nothing
    old = results_io.load_config(out)
    old_settings = (old or {}).get("settings", {})
    old_settings = {k: old_settings.get(k, _RUN_KEY_DEFAULTS.get(k)) for k in _RUN_KEYS}
    differ = {k: (old_settings[k], settings.get(k)) for k in _RUN_KEYS
              if _as_json(old_settings[k]) != _as_json(settings.get(k))}
    if differ:
        detail = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differ.items())
        raise InputError(f"out_dir={str(out)!r} holds results of different settings ({detail}); "
                         f"use another directory or overwrite=True (--overwrite)")
    schema = run_directory.RunSchema.from_specs(specs, settings["reference"])
    return run_directory.read_resume_rows(out, schema), old


def _as_json(value):
    """``value`` as config.json gives it back (tuples as lists, objects as strings)."""
    return json.loads(json.dumps(value, default=str))
