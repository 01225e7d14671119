"""PyTorch Lightning: ``trainer = Trainer(callbacks=[IBCallback("digits", every=20, out=DIR)])``.

The callback tracks the LightningModule (or its ``submodule``) with :func:`ibtools.track`:
the starting weights when training starts, then every ``every`` global (optimizer) steps after
a training batch, and the final weights when training ends.  With gradient accumulation a
global step spans several batches; each step is measured once.
"""

from __future__ import annotations

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the older standalone package
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError as exc:
        raise ImportError("ibtools.integrations.lightning needs PyTorch Lightning: "
                          "pip install 'ibtools[lightning]'") from exc

from ibtools.integrations import resolve_submodule, split_track_kwargs

__all__ = ["IBCallback"]


class IBCallback(Callback):
    """Track information-bottleneck quantities during ``Trainer.fit``.

    Parameters
    ----------
    probe_data : str, tuple or iterable
        As in :func:`ibtools.track`; fed through the tracked module's ``forward``.
    submodule : str, optional
        Dotted name of the network inside the LightningModule to track (``"model"``);
        default the LightningModule itself.  Layer names are relative to it.
    **track_kwargs
        Everything else :func:`ibtools.track` takes (``layers``, ``estimators``, ``every``,
        ``out``, ``background``, ``tensorboard``, ...).

    Attributes
    ----------
    tracker : ibtools.tracking.Tracker or None
        The tracker of the current (or last) fit; its ``table`` holds the rows.
    """

    def __init__(self, probe_data, submodule: str | None = None, **track_kwargs):
        super().__init__()
        self.probe_data, self.submodule = probe_data, submodule
        self.track_kwargs = split_track_kwargs(probe_data, submodule, track_kwargs)
        self.tracker = None

    def on_train_start(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        from ibtools.tracking import track

        model = resolve_submodule(pl_module, self.submodule, "LightningModule")
        self.tracker = track(model, self.probe_data, **self.track_kwargs)
        self.tracker.measure(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.tracker is not None and not self.tracker.closed:
            self.tracker.step(trainer.global_step)

    def on_train_end(self, trainer, pl_module):
        if self.tracker is not None and not self.tracker.closed:
            try:
                self.tracker.measure(trainer.global_step)
            finally:
                self.tracker.close()

    def on_exception(self, trainer, pl_module, exception):
        if self.tracker is not None:
            self.tracker.close()
