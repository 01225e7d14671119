"""Hugging Face ``Trainer``: ``Trainer(..., callbacks=[IBTrainerCallback("text:corpus.txt",
layers="transformer.h.*", every=50, out=DIR)])``.

The callback tracks the model the Trainer trains (or its ``submodule``) with
:func:`ibtools.track`: the starting weights at ``on_train_begin``, every ``every`` global
steps at ``on_step_end``, the final weights at ``on_train_end``.  Only the main process
(``state.is_world_process_zero``) measures.
"""

from __future__ import annotations

try:
    from transformers import TrainerCallback
except ImportError as exc:
    raise ImportError("ibtools.integrations.hf needs transformers: pip install 'ibtools[hf]'") \
        from exc

from ibtools.errors import InputError
from ibtools.integrations import resolve_submodule, split_track_kwargs

__all__ = ["IBTrainerCallback"]


class IBTrainerCallback(TrainerCallback):
    """Track information-bottleneck quantities during ``Trainer.train``.

    Parameters
    ----------
    probe_data : str, tuple or iterable
        As in :func:`ibtools.track`; token ids ``(n, T)`` with next-token targets for
        language models (``"text:PATH"`` tokenizes with the model's tokenizer when it has
        one, bytes otherwise).
    submodule : str, optional
        Dotted name of the part of the model to track; default the whole model.
    **track_kwargs
        Everything else :func:`ibtools.track` takes.

    Attributes
    ----------
    tracker : ibtools.tracking.Tracker or None
        The tracker of the current (or last) training run.
    """

    def __init__(self, probe_data, submodule: str | None = None, **track_kwargs):
        self.probe_data, self.submodule = probe_data, submodule
        self.track_kwargs = split_track_kwargs(probe_data, submodule, track_kwargs)
        self.tracker = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if model is None:
            raise InputError("IBTrainerCallback.on_train_begin was called without the model; "
                             "it needs the Trainer's model keyword")
        from ibtools.tracking import track

        target = resolve_submodule(model, self.submodule, "model")
        self.tracker = track(target, self.probe_data, **self.track_kwargs)
        self.tracker.measure(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.tracker is not None and not self.tracker.closed:
            self.tracker.step(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.tracker is not None and not self.tracker.closed:
            try:
                self.tracker.measure(state.global_step)
            finally:
                self.tracker.close()
