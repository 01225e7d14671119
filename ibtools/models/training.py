"""A small, seeded training loop that writes ibtools checkpoints.

Vision models (``mlp``, ``cnn``, ``vit``) train on digits with cross-entropy and report
test accuracy; language models (``gpt``, ``llama``) train on random byte windows and
report validation loss (nats per byte).  AdamW, gradient clipping at 1.0.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ibtools.errors import InputError, InputTypeError
from ibtools.models.checkpoint_format import save_checkpoint
from ibtools.models.data import TextData, VisionData, load_data
from ibtools.norms import describe_norms
from ibtools.results import write_atomic

__all__ = ["TrainingHistory", "train", "evaluate", "training_complete", "COMPLETE_MARKER"]

#: Written atomically into ``out_dir`` after the final checkpoint and ``history.json``: a
#: training run is finished only when this file exists (checkpoints alone may be the first
#: few of an interrupted run).
COMPLETE_MARKER = "training_complete.json"

_DEFAULTS = {  # (epochs, batch_size) per input kind: each default run is well under a minute on a CPU
    "vector": (20, 64), "image": (20, 64), "tokens": (4, 32),
}
_VAL_BATCHES = 8


class TrainingHistory(list):
    """The list of per-epoch records :func:`train` returns; ``.model`` is the trained model."""

    model: nn.Module | None = None


def _vision_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    if model.input_kind == "image":
        c, s = model.config["in_channels"], model.config["image_size"]
        return x.view(-1, c, s, s)
    return x


@torch.no_grad()
def evaluate(model: nn.Module, data: VisionData | TextData, *, block_size: int | None = None,
             batch_size: int = 256) -> dict:
    """Test accuracy and loss (vision) or validation loss over fixed windows (text), in nats.

    The model is put in eval mode for the measurement and returned to its previous mode.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        if isinstance(data, VisionData):
            correct, loss, n = 0, 0.0, len(data.y_test)
            for i in range(0, n, batch_size):
                x = _vision_input(data.x_test[i:i + batch_size].to(device), model)
                y = data.y_test[i:i + batch_size].to(device)
                logits = model(x)
                loss += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(-1) == y).sum().item()
            return {"test_accuracy": correct / n, "test_loss": loss / n}
        block = block_size or model.config["block_size"]
        # Evenly spaced, non-random windows: the same for every call, so values compare.
        n_windows = min(_VAL_BATCHES * 32, max(1, len(data.val) - block - 1))
        starts = torch.linspace(0, len(data.val) - block - 1, n_windows).long()
        total = 0.0
        for i in range(0, len(starts), 32):
            s = starts[i:i + 32]
            idx = torch.stack([data.val[j:j + block + 1] for j in s.tolist()]).to(device)
            logits = model(idx[:, :-1])
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1),
                                     reduction="sum").item()
        return {"val_loss": total / (len(starts) * block)}
    finally:
        model.train(was_training)


def _text_batch(data: TextData, block: int, batch_size: int, gen: torch.Generator, device) -> tuple:
    starts = torch.randint(0, len(data.train) - block - 1, (batch_size,), generator=gen)
    idx = torch.stack([data.train[j:j + block + 1] for j in starts.tolist()]).to(device)
    return idx[:, :-1], idx[:, 1:]


def train(model_or_name, data: str | None = None, *, epochs: int | None = None, lr: float = 2e-3,
          batch_size: int | None = None, seed: int = 0, out_dir: str | os.PathLike | None = None,
          checkpoint_every: int | None = None, max_steps: int | None = None, weight_decay: float = 0.0,
          device=None, model_config: dict | None = None, num_threads: int | None = 1) -> TrainingHistory:
    """Train a reference model and optionally save checkpoints along the way.

    Parameters
    ----------
    model_or_name : ReferenceModel or str
        A model (trained in place) or a name from ``REFERENCE_MODELS``, built with
        ``model_config`` after seeding with ``seed``.
    data : str, optional
        ``"digits"`` (vision default), ``"text"`` (the ``inspect`` module's source; LM
        default) or ``"text:PATH"``.
    epochs : int, optional
        Passes over the training set (digits: 20 by default; text: 4, where one epoch is
        ``len(train) // (batch_size * block_size)`` random windows).
    lr, weight_decay : float
        AdamW settings.
    batch_size : int, optional
        64 for vision, 32 for text by default.
    seed : int
        Seeds model initialisation (when built here) and batch order.
    out_dir : path, optional
        Where to write ``step_000000.pt`` (before training), every ``checkpoint_every``
        steps, the final step, and ``history.json``.
    checkpoint_every : int, optional
        Steps between checkpoints.
    max_steps : int, optional
        Stop after this many optimizer steps (short test runs).
    device : str or torch.device, optional
        Where to train; default: where the model is.
    model_config : dict, optional
        Keyword arguments for :func:`ibtools.models.build_model` when a name is given.
    num_threads : int, optional
        Intra-op threads while training on a CPU (restored afterwards); ``None`` keeps
        torch's setting.  The default 1 is fastest for these tiny models: per-operation
        thread synchronisation costs more than it saves, and far more on a busy machine.

    Returns
    -------
    TrainingHistory
        A list with one dict per epoch (``epoch``, ``step``, ``train_loss``, ``seconds`` and
        ``test_accuracy``/``test_loss`` or ``val_loss``); ``.model`` is the trained model
        (in eval mode).
    """
    from ibtools.models import REFERENCE_MODELS, build_model

    if isinstance(model_or_name, str):
        torch.manual_seed(seed)
        model = build_model(model_or_name, **(model_config or {}))
    elif isinstance(model_or_name, nn.Module) and type(model_or_name) in REFERENCE_MODELS.values():
        if model_config:
            raise InputError("model_config is only used when model_or_name is a name")
        model = model_or_name
    else:
        raise InputTypeError(f"model_or_name must be a name in {sorted(REFERENCE_MODELS)} or a reference model, "
                             f"got {type(model_or_name).__name__}")
    for arg, value in (("checkpoint_every", checkpoint_every), ("max_steps", max_steps),
                       ("epochs", epochs), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{arg} must be a positive integer or None, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise InputError(f"lr must be a positive number, got {lr!r}")
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                    or num_threads < 1):
        raise InputError(f"num_threads must be a positive integer or None, got {num_threads!r}")
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    previous_threads = torch.get_num_threads()
    if num_threads is not None and device.type == "cpu":
        torch.set_num_threads(num_threads)
    try:
        return _train(model, data, epochs, lr, batch_size, seed, out_dir, checkpoint_every, max_steps,
                      weight_decay, device)
    finally:
        torch.set_num_threads(previous_threads)


def _train(model, data, epochs, lr, batch_size, seed, out_dir, checkpoint_every, max_steps, weight_decay,
           device) -> TrainingHistory:

    dataset = load_data(data, model.input_kind)
    default_epochs, default_batch = _DEFAULTS[model.input_kind]
    epochs, batch_size = epochs or default_epochs, batch_size or default_batch
    gen = torch.Generator().manual_seed(seed)
    if isinstance(dataset, VisionData):
        n = len(dataset.y_train)
        steps_per_epoch = math.ceil(n / batch_size)
    else:
        block = model.config["block_size"]
        steps_per_epoch = max(1, len(dataset.train) // (batch_size * block))
    total_steps = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:  # an earlier run's marker must not vouch for this one's checkpoints
        (out / COMPLETE_MARKER).unlink(missing_ok=True)
    written = []
    norm_info = describe_norms(model)
    base_meta = {"norm": norm_info["norm"], "lam": norm_info["lam"], "seed": seed, "data": dataset.name,
                 "lr": lr, "batch_size": batch_size}
    history = TrainingHistory()
    step, since_ckpt, t0 = 0, [], time.perf_counter()

    def checkpoint(epoch: float) -> None:
        meta = dict(base_meta, step=step, epoch=round(epoch, 4),
                    train_loss=sum(since_ckpt) / len(since_ckpt) if since_ckpt else None)
        meta.update(evaluate(model, dataset))
        save_checkpoint(model, out / f"step_{step:06d}.pt", name=model.name, meta=meta)
        written.append(f"step_{step:06d}.pt")
        since_ckpt.clear()

    if out is not None:
        checkpoint(0.0)
    model.train()
    for epoch in range(1, epochs + 1):
        losses = []
        order = torch.randperm(n, generator=gen) if isinstance(dataset, VisionData) else None
        for i in range(steps_per_epoch):
            if step >= total_steps:
                break
            if order is not None:
                batch = order[i * batch_size:(i + 1) * batch_size]
                x = _vision_input(dataset.x_train[batch].to(device), model)
                y = dataset.y_train[batch].to(device)
                loss = F.cross_entropy(model(x), y)
            else:
                x, y = _text_batch(dataset, block, batch_size, gen, device)
                logits = model(x)
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            losses.append(loss.item())
            since_ckpt.append(losses[-1])
            if out is not None and checkpoint_every and step % checkpoint_every == 0:
                checkpoint(step / steps_per_epoch)
        if not losses:
            break
        record = {"epoch": epoch, "step": step, "train_loss": sum(losses) / len(losses)}
        record.update(evaluate(model, dataset))
        record["seconds"] = round(time.perf_counter() - t0, 3)
        history.append(record)
        if step >= total_steps:
            break
    if out is not None:
        if not (checkpoint_every and step % checkpoint_every == 0):
            checkpoint(step / steps_per_epoch)
        run = {"arch": f"ibtools:{model.name}", "config": model.config, "meta": base_meta, "history": list(history)}
        write_atomic(out / "history.json", json.dumps(run, indent=2))
        settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                    "checkpoint_every": checkpoint_every, "max_steps": max_steps,
                    "weight_decay": weight_decay, "data": dataset.name}
        marker = {"arch": f"ibtools:{model.name}", "config": model.config, "settings": settings,
                  "final_step": step, "checkpoints": written}
        write_atomic(out / COMPLETE_MARKER, json.dumps(marker, indent=2, default=str))
    history.model = model.eval()
    return history


def training_complete(out_dir, **expected) -> dict | None:
    """The completion record of a finished training run in ``out_dir``, or None.

    None when the marker is missing or unreadable (the run was interrupted or never ran),
    when one of the checkpoints it lists is gone, or when a keyword given here differs from
    what the run recorded (``epochs=``, ``seed=``, ``batch_size=``, ``checkpoint_every=`` ...
    from its settings, ``config=`` for the model configuration).
    """
    out = Path(out_dir)
    try:
        marker = json.loads((out / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("checkpoints"), list):
        return None
    recorded = dict(marker.get("settings") or {}, config=marker.get("config"))
    for key, value in expected.items():
        if json.loads(json.dumps(recorded.get(key), default=str)) != json.loads(
                json.dumps(value, default=str)):
            return None
    if not all((out / name).is_file() for name in marker["checkpoints"]):
        return None
    return marker
