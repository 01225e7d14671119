"""Where a tracker writes: its run directory (locked, resumed only under the same settings)
and its TensorBoard writer."""

from __future__ import annotations

import json

from ibtools import results as results_io
from ibtools.errors import InputError, InputTypeError

#: Settings whose change makes a tracked directory's old rows incomparable.
RUN_KEYS = ("probe_data", "layers", "estimators", "reference", "max_samples", "seed", "pool",
            "ci", "betas", "name")


def open_run_directory(out, stack, settings: dict, overwrite: bool, resume: bool) -> list:
    """Lock ``out`` (released by ``stack``) and return the rows a resumed run starts from:
    none for a new or overwritten directory; refuse results of other settings, and results
    at all unless ``resume`` or ``overwrite`` says what to do with them."""
    from ibtools import run_directory

    if out.exists() and not out.is_dir():
        raise InputError(f"out={str(out)!r} exists and is not a directory")
    stack.enter_context(run_directory.run_directory_lock(out, timeout=0))
    files = [out / n for n in (*results_io.RESULT_FILES, results_io.RESULTS_JOURNAL)]
    if not any(f.exists() for f in files):
        return []
    if overwrite:
        for f in files:
            f.unlink(missing_ok=True)
        return []
    if not resume:
        raise InputError(f"out={str(out)!r} already holds results; pass resume=True to add to "
                         f"them (a step measured again replaces its rows) or overwrite=True to "
                         f"start afresh")
    old = (results_io.load_config(out) or {}).get("settings", {})
    differ = [k for k in RUN_KEYS if json.dumps(old.get(k), default=str)
              != json.dumps(settings.get(k), default=str)]
    if differ:
        detail = "; ".join(f"{k}: {old.get(k)!r} there, {settings[k]!r} now" for k in differ)
        raise InputError(f"out={str(out)!r} holds results of other tracking settings "
                         f"({detail}); use another directory or overwrite=True")
    rows = (results_io.load_results(out).to_dict("records")
            if any((out / n).exists() for n in results_io.RESULT_FILES) else [])
    return rows + results_io.read_journal(out)


def tensorboard_writer(tensorboard, out):
    """``(writer, owned)`` for the ``tensorboard`` argument: none, a new SummaryWriter in
    ``out/tensorboard`` (owned: the tracker closes it), or the user's own writer."""
    if tensorboard is False or tensorboard is None:
        return None, False
    if tensorboard is True:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError("tensorboard=True needs the tensorboard package: pip install "
                              "'ibtools[tensorboard]'") from exc
        log_dir = None if out is None else str(out / "tensorboard")
        return SummaryWriter(log_dir=log_dir), True
    if not callable(getattr(tensorboard, "add_scalar", None)):
        raise InputTypeError(f"tensorboard={tensorboard!r} is not accepted; use True, False or a "
                             f"torch.utils.tensorboard.SummaryWriter")
    return tensorboard, False
