"""``ibtools demo``: the whole job on a built-in default, offline, in a few minutes of CPU.

Trains tiny MLPs on scikit-learn's digits — a LayerNorm baseline and IBNorm-S/L/T at
several lambda — saving checkpoints along training, then analyzes every checkpoint's norm
layers with a sweep of estimators (binning at two bin counts, KDE at two noise variances,
KSG on copula-transformed data) and writes the results table (and, through the CLI, the
report).  ``quick=True`` trains fewer, shorter runs for smoke tests.
"""

from __future__ import annotations

import time
from pathlib import Path

#: (norm, lam) pairs of the full demo; lam = 0 rows are the plain LayerNorm baseline.
FULL_MODELS = [("layer", 0.0), ("ib-S", 1.0), ("ib-L", 1.0), ("ib-T", 1.0), ("ib-T", 4.0)]
QUICK_MODELS = [("layer", 0.0), ("ib-T", 2.0)]
FULL_ESTIMATORS = ["binning:n_bins=10", "binning:n_bins=30", "kde:noise_var=0.1",
                   "kde:noise_var=0.01", "ksg:k=3,transform='copula'"]
QUICK_ESTIMATORS = ["binning:n_bins=30", "kde:noise_var=0.1"]


def run_demo(out_dir="ibtools-demo", *, quick=False, device="auto", seed=0, progress=None,
             echo=print, epochs=None):
    """Train, checkpoint and analyze the demo models; return the results table.

    Parameters
    ----------
    out_dir : path
        Run directory: ``checkpoints/<norm>_lam<lam>/`` and the results files.
    quick : bool
        Two models, short training, two estimator settings (a smoke-test size).
    device, seed, progress
        As in :func:`ibtools.analyze`.
    echo : callable
        Where progress lines go.
    epochs : int, optional
        Override the number of training epochs.
    """
    from ibtools.analysis import analyze
    from ibtools.models import train
    from ibtools.models.training import training_complete

    out = Path(out_dir)
    models = QUICK_MODELS if quick else FULL_MODELS
    estimators = QUICK_ESTIMATORS if quick else FULL_ESTIMATORS
    n_epochs = epochs if epochs is not None else (6 if quick else 30)
    from ibtools.models.data import load_digits_split

    batch_size = 64
    steps_per_epoch = -(-int(load_digits_split().x_train.shape[0]) // batch_size)
    every = max(1, n_epochs * steps_per_epoch // 3)  # step 0, three along training, the last
    checkpoints = []
    for norm, lam in models:
        tag = f"{norm}_lam{lam:g}"
        run_dir = out / "checkpoints" / tag
        # resume: a training run is finished only when its completion marker says so (with
        # these settings); checkpoints without it are an interrupted run, trained again
        done = training_complete(run_dir, epochs=n_epochs, seed=seed, batch_size=batch_size,
                                 checkpoint_every=every)
        if done:
            checkpoints += [run_dir / name for name in done["checkpoints"]]
            echo(f"[demo] {tag}: finished training run in {run_dir} "
                 f"({len(done['checkpoints'])} checkpoints)")
            continue
        partial = sorted(run_dir.glob("step_*.pt"))
        if partial:
            echo(f"[demo] {tag}: {len(partial)} checkpoint(s) in {run_dir} but no completion "
                 f"marker (interrupted, or other settings); training again")
            for path in partial:
                path.unlink()
        start = time.perf_counter()
        history = train("mlp", model_config={"norm": norm, "lam": lam}, data="digits", epochs=n_epochs, seed=seed, out_dir=run_dir,
                        checkpoint_every=every, batch_size=batch_size,
                        device=None if device == "auto" else device)
        last = history[-1] if history else {}
        acc = last.get("test_accuracy")
        echo(f"[demo] trained {tag} in {time.perf_counter() - start:.1f} s"
             + (f", test accuracy {acc:.3f}" if acc is not None else ""))
        checkpoints += sorted(run_dir.glob("*.pt"))
    echo(f"[demo] analyzing {len(checkpoints)} checkpoints with {len(estimators)} estimator "
         f"settings")
    return analyze(checkpoints, data="digits", estimators=estimators, betas=[0.1],
                   reference="input", max_samples=450, device=device, seed=seed,
                   out_dir=out, progress=progress)
