"""The tasks a Dask worker runs for :func:`ibtools.analyze`: a checkpoint's plan (its layers,
from one batch) and a layer group's capture and estimates.  Both load the checkpoint on the
worker, so activations stay there; both return errors in what the user gave as values, so
they are raised on the driver at once instead of being retried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import warnings
from pathlib import Path

import torch

from ibtools import analysis
from ibtools import inputs as inputs_io
from ibtools import noise_channel, noisy
from ibtools.distributed.cluster import worker_device

#: Errors in what the user gave: raised on the driver at once, never retried.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError)
#: Words ``select_layers`` reads as groups, never as a module's name: a checkpoint whose
#: layers carry one is captured whole, with the user's own ``layers`` spec.
_GROUP_WORDS = ("norms", "blocks", "leaves", "all")

#: Tests only: a path; the first task to create it ends its worker process mid-task.
_exit_once_marker = None


@dataclasses.dataclass(frozen=True)
class ClusterJob:
    """The run's settings, as every task needs them (``data`` travels separately)."""

    specs: list
    betas: list
    reference: str
    max_samples: int
    device: str
    seed: int
    pool: str | None
    ci: str | None
    split: str
    arch: str | None
    data: object
    layers: object
    arch_kwargs: dict | None
    trust_pickle: bool
    trust_code: bool
    capture_options: dict
    strict: bool
    threads: object
    data_name: str = ""


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
    threads = job.threads
    if threads == "auto":
        threads = 1 if dev.type == "cpu" and job.max_samples <= 4096 else None
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
    model, info = inputs_io.open_checkpoint(ckpt, load_model, arch=job.arch,
                                            trust_pickle=job.trust_pickle,
                                            trust_code=job.trust_code, strict=job.strict,
                                            **(job.arch_kwargs or {}))
    return model.to(dev).eval(), info


def _plan_task(job: ClusterJob, data, source, label) -> dict:
    """A checkpoint's layers in forward order with their widths, from one batch through the
    model, and whether it must stay one group."""
    from ibtools.probes import capture_activations
    from ibtools.probes.datasets import AnalysisData

    try:
        with _on_worker(job) as (dev, caught):
            model, _ = _open(job, source, dev)
            trained_std = noisy.check_single_channel(model, job.specs, label)
            dataset = inputs_io.resolve_data(data, model=model, split=job.split, seed=job.seed)
            inputs, targets = next(iter(dataset.batches(job.capture_options["batch_size"])))
            probe = AnalysisData(inputs, targets, kind=dataset.kind, name=str(dataset.name))
            with analysis._capture(capture_activations, model, probe, job.data_name,
                                   layers=job.layers, pool=job.pool, seed=job.seed,
                                   device=dev, **{k: v for k, v in job.capture_options.items()
                                                  if k == "reduce"}) as acts:
                layers = [(name, int(acts[name][0].numel())) for name in acts.layers]
                x_dim = int(acts.x[0].numel())
        # a noisy network's mixture rows come from one Monte Carlo over all its layers
        whole = bool(trained_std) and any(s.method == "mixture" for s in job.specs)
        return {"layers": layers, "x_dim": x_dim, "whole": whole,
                "warnings": _shown(caught)}
    except USER_ERRORS as exc:
        return {"error": exc}


def _group_task(job: ClusterJob, data, source, label, ident, fp, entries, todo) -> dict:
    """Rows of one layer group: ``entries`` are (index, name) of the group's layers and of the
    layer before it, ``todo`` maps a layer's name to the indices of the settings it lacks.
    ``entries=None`` is the whole checkpoint with the user's ``layers`` (no plan was needed);
    ``todo`` then holds the (layer, setting, beta) steps already done."""
    from ibtools.probes import capture_activations

    try:
        with _on_worker(job) as (dev, caught):
            model, info = _open(job, source, dev)
            base = analysis._row_base(model, info, label, ident, fp, job.seed, job.reference)
            trained_std = noisy.check_single_channel(model, job.specs, label)
            dataset = inputs_io.resolve_data(data, model=model, split=job.split, seed=job.seed)
            acts = analysis._capture(capture_activations, model, dataset, job.data_name,
                                     layers=job.layers if entries is None else
                                     _modules(entries, job.layers), max_rows=job.max_samples,
                                     pool=job.pool, seed=job.seed, device=dev,
                                     **job.capture_options)
            _exit_once_for_tests()
            with acts:
                if entries is None:
                    entries, todo = _whole(acts.layers, todo, job)
                names = dict(entries)
                # a noisy network's group is all its layers (the plan's "whole"), as serially
                paths = noisy.checkpoint_paths(model, dataset, acts.x, acts.y,
                                               list(names.values()), job.specs, job.seed,
                                               trained_std)
                steps = [_step(job, acts, names, index, name, k, base, paths, dev)
                         for index, name in entries if name in todo for k in todo[name]]
        return {"steps": steps, "warnings": _shown(caught)}
    except USER_ERRORS as exc:
        return {"error": exc}


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


def _step(job: ClusterJob, acts, names, index, name, k, base, paths, dev) -> list[dict]:
    """The rows of one (layer, setting) step, as the serial loop makes them."""
    spec = job.specs[k]
    t_prev = acts.x if index == 0 else acts[names[index - 1]]
    new = analysis._layer_rows(spec, acts.x, acts.y, acts[name], t_prev, index, job.betas,
                               job.seed, dev, job.ci, job.reference,
                               where=f"checkpoint {base['checkpoint']!r}, layer {name!r}, "
                                     f"{spec.label}", paths=noisy.layer_paths(paths, spec, name))
    for r in new:
        r.update(base, layer=name, layer_index=index, reduction=analysis._reduction(acts, name))
    return noise_channel.label_modes(new)


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
