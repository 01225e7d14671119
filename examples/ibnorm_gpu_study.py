"""IBNorm-T against LayerNorm in larger models, prepared for one GPU: a 6-layer GPT-style LM
and a small ViT, deterministic and noisy.

    python examples/ibnorm_gpu_study.py [--out study-out/gpu] [--device cuda] [--seeds 3]
                                        [--noise-std 0.1] [--data-dir docs/data] [--quick]

Models (``--quick`` shrinks all of them to run on a CPU in seconds):

- ``gpt``: GPT-2-style byte-level LM, 6 blocks, width 128, 4 heads, context 64, trained on the
  text ibtools ships as its default corpus (the source of Python's ``inspect`` module, 90%
  train / 10% validation), AdamW lr 1e-3, batch 64, 16 epochs (about 420 steps); measured on
  2048 tokens of the validation text (Y = the next byte);
- ``vit``: ViT on scikit-learn's digits at their native 8x8 (patches of 2x2: 16 patches and a
  class token; upsampling would add pixels, not information), width 64, 4 blocks, 4 heads,
  lr 2e-3, batch 64, 30 epochs; measured on the 450 test digits (Y = the class).

Each with LayerNorm, IBNorm-T lambda=1 and IBNorm-T lambda=4, ``--seeds`` seeds, in two modes:

- ``deterministic``: trained without noise; every block output measured by binning, KDE
  (both bounds) and, for the ViT, KSG (k=3).  On a sample of distinct inputs the true IB value is the
  same for every such network, so any difference is the estimators' resolution;
- ``noisy-<sigma>``, one per ``--noise-std`` (default 1 and 4): trained with Gaussian noise
  of that std after every block (``noise_std`` of the reference models) and measured with the
  mixture estimator from noise paths (``mode = trained-noise``).  A model class without
  ``noise_std`` falls back to the analysis-time channel, ``analyze(noise_std=...)`` on the
  deterministic network (``mode = analysis-noise``), and the rows say which.  The residual
  streams are unbounded and wide: in a ViT of this size after 5 epochs the block outputs'
  per-coordinate sd was 1.4-2.6 and the median distance between a test digit's row and its
  nearest neighbour 15-24, so noise of std 0.1 leaves every input its own mixture component
  and I(X;T) at ln n; sigma 1 and 4 bracket the scale where inputs start to merge.
  ``ceiling.csv`` gives the share of rows at that ceiling per model, mode, setting and layer.
  Trained networks can outgrow such noise: their residual streams are not bounded, and a
  CPU run of the ViT put every cell at sigma 1 and 4 at the ceiling (``docs/ibnorm-study.md``);
- ``channel-<S>``, one per ``--channel-std`` (none by default): the deterministic networks,
  unchanged, read through an analysis-time Gaussian channel of std S at every block output
  (``analyze(noise_std=S)``, mixture estimator, ``mode = analysis-noise``).  A network cannot
  outgrow a channel it never trained with, but a fixed S reads a larger layer as more
  information;
- ``relchannel-<S>``, one per ``--channel-rel``: the same with S in units of each block
  output's own scale (``noise_scale="layer"``), so networks whose layers differ only by a
  factor read alike.

Every IBNorm-T cell (model, mode, variant, layer, setting) is compared with LayerNorm by
:mod:`ibtools.compare` (Welch over seeds, Holm over all cells, minimum effect 0.01 nat).
Writes into OUT: ``checkpoints/``, ``analysis/`` (a rerun resumes both), ``results.csv``,
``metrics.csv`` (validation loss or test accuracy per seed), ``summary.csv``,
``comparison.csv``, ``ceiling.csv``, ``scale.csv`` (per run and layer: the block outputs'
per-coordinate sd and median nearest-neighbour distance, the scale a channel's S is read
against), ``environment.json`` (with the GPU's name); with
``--data-dir`` also ``<NAME>_*.csv`` and ``<NAME>_environment.json`` there (``--data-name``,
default ``gpu``).

Sized for under 10 minutes of one H200 (54 training runs of a few hundred steps, one
analysis per run's final checkpoint; an estimate until it has run on one).  On 2 CPU cores
with ``--jobs 2`` the ViT's three modes took 8 min 23 s and the GPT's deterministic mode
34 min (5-7 min per run); ``--quick`` is the smoke test.
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _study_common import Variant, say, seed_summary, write_csv

BETA = 0.1
NORMS = (("layer", 0.0), ("ib-T", 1.0), ("ib-T", 4.0))
QUICK_NORMS = (("layer", 0.0), ("ib-T", 1.0))

FULL = {
    "gpt": {"config": {"n_layer": 6, "n_head": 4, "n_embd": 128, "block_size": 64},
            "training": {"epochs": 16, "batch_size": 64, "lr": 1e-3, "checkpoint_every": 10_000},
            "data": "text", "metric": "val_loss", "max_samples": 2048,
            # KSG is left out: it reads the LM's integer token inputs X as class labels, one
            # row each, and refuses I(X;T) ("every class has a single sample")
            "estimators": ["binning:bin_width=0.5", "kde:noise_var=0.1",
                           "kde:noise_var=0.1,bound='lower'"]},
    "vit": {"config": {"image_size": 8, "patch_size": 2, "dim": 64, "depth": 4, "heads": 4},
            "training": {"epochs": 30, "batch_size": 64, "lr": 2e-3, "checkpoint_every": 10_000},
            "data": "digits", "metric": "test_accuracy", "max_samples": 450},
}
QUICK = {
    "gpt": {"config": {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16},
            "training": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "max_steps": 6,
                         "checkpoint_every": 10_000},
            "data": "text", "metric": "val_loss", "max_samples": 96},
    "vit": {"config": {"image_size": 8, "patch_size": 4, "dim": 16, "depth": 2, "heads": 2},
            "training": {"epochs": 1, "batch_size": 64, "lr": 2e-3, "max_steps": 6,
                         "checkpoint_every": 10_000},
            "data": "digits", "metric": "test_accuracy", "max_samples": 64},
}
LAYER_PREFIX = {"gpt": "blocks", "vit": "blocks"}
DEPTH_KEY = {"gpt": "n_layer", "vit": "depth"}
#: Block outputs of a pre-norm transformer are residual streams of unit-order scale.
DETERMINISTIC = ["binning:bin_width=0.5", "kde:noise_var=0.1", "kde:noise_var=0.1,bound='lower'",
                 "ksg:k=3"]
QUICK_DETERMINISTIC = ["binning:bin_width=0.5", "kde:noise_var=0.1"]


def cpu_seconds() -> float:
    """CPU time of this process and of its finished worker processes (``--jobs``)."""
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def has_noise_option(model: str) -> bool:
    """Whether the reference model's constructor takes ``noise_std`` (train-time noise)."""
    from ibtools.models import REFERENCE_MODELS

    return "noise_std" in inspect.signature(REFERENCE_MODELS[model].__init__).parameters


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def train_run(model: str, spec: dict, variant: Variant, seed: int, noise_std: float,
              folder: Path, device: str) -> Path:
    """Train one run (skipped when finished: ``history.json`` exists); the final checkpoint."""
    from ibtools.models import train

    if not (folder / "history.json").exists():
        config = dict(spec["config"], norm=variant.norm)
        if not variant.is_baseline:
            config["lam"] = variant.lam
        if noise_std:
            config.update(noise_std=noise_std, noise_seed=seed)
        start, cpu = time.perf_counter(), cpu_seconds()
        history = train(model, spec["data"], seed=seed, out_dir=folder, model_config=config,
                        device=device, **spec["training"])
        last = history[-1]
        metric = spec["metric"]
        say(f"[train] {folder.relative_to(folder.parents[3])}: "
            f"{time.perf_counter() - start:.1f} s wall, {cpu_seconds() - cpu:.1f} s CPU, "
            f"{metric} {last[metric]:.3f}")
    return max(folder.glob("step_*.pt"))


def block_scale(net, spec: dict, layers: list, device: str) -> list[dict]:
    """Per measured layer, the scale an analysis-time channel is read against: the block
    output's per-coordinate sd (mean over coordinates) and the median distance from a row
    to its nearest other row, on the measured data (``max_samples`` rows, seed 0; noise
    included for a network that adds it in evaluation)."""
    from ibtools.probes import capture_activations, load_dataset

    data = load_dataset(spec["data"], model=net, max_samples=spec["max_samples"], seed=0)
    acts = capture_activations(net, data, layers, max_rows=spec["max_samples"], seed=0,
                               device=device)
    rows = []
    for layer in layers:
        t = torch.as_tensor(acts[layer]).reshape(len(acts[layer]), -1).double()
        d = torch.cdist(t, t)
        d.fill_diagonal_(float("inf"))
        rows.append({"layer": layer, "dim": t.shape[1], "n_rows": t.shape[0],
                     "coord_sd": float(t.std(dim=0).mean()),
                     "nn_distance_median": float(d.min(dim=1).values.median())})
    return rows


def _run_one(model: str, spec: dict, variant: Variant, seed: int, mode: str, noise_std: float,
             trained_noise: bool, layers: list, out: Path, device: str,
             deterministic: tuple) -> tuple[pd.DataFrame, dict, list]:
    """Train (or reuse) and analyze one (model, mode, variant, seed): its rows, metrics and
    :func:`block_scale` rows.  A worker task of :func:`study`."""
    import ibtools

    if device == "cpu":
        torch.set_num_threads(1)
    noisy = noise_std > 0
    # the fallback's noisy rows read the deterministic network through a channel
    train_mode = mode if noisy and trained_noise else "deterministic"
    folder = out / "checkpoints" / model / train_mode / variant.tag / f"seed{seed}"
    final = train_run(model, spec, variant, seed, noise_std if train_mode == mode else 0.0,
                      folder, device)
    net, info = ibtools.load_model(final)
    metric = {"model": model, "mode": mode, "norm": variant.norm, "lam": variant.lam,
              "seed": seed, "step": info["meta"]["step"],
              spec["metric"]: info["meta"][spec["metric"]]}
    kwargs = {"estimators": list(spec.get("estimators", deterministic))}
    if noisy:
        kwargs = {"estimators": ["mixture:mc_tolerance=0.02"]}
        if not trained_noise:
            kwargs["noise_std"] = noise_std
            if mode.startswith("relchannel-"):  # S in units of each layer's own scale
                kwargs["noise_scale"] = "layer"
    start, cpu = time.perf_counter(), cpu_seconds()
    run_out = out / "analysis" / model / mode / variant.tag / f"seed{seed}"
    table = ibtools.analyze([str(final)], data=spec["data"], layers=layers, betas=[BETA],
                            reference="previous", max_samples=spec["max_samples"], seed=0,
                            device=device, out_dir=run_out, progress=False, **kwargs)
    say(f"[analyze] {model} {mode} {variant.tag} seed {seed}: "
        f"{time.perf_counter() - start:.1f} s wall, {cpu_seconds() - cpu:.1f} s CPU")
    # every input its own mixture component (or bin, or kernel): the value says only that
    # the sample is too small for this sigma or resolution
    ceiling = np.log(table["n_samples"].astype(float))
    keys = {"model": model, "mode": mode, "norm": variant.norm, "lam": variant.lam, "seed": seed}
    scale = [dict(keys, **row) for row in block_scale(net, spec, layers, device)]
    return (table.assign(study_mode=mode, at_ceiling=table["i_xt"] >= 0.98 * ceiling), metric,
            scale)


def study(out: Path, sizes: dict, norms, seeds, noise_stds, device: str,
          models=("gpt", "vit"), deterministic=tuple(DETERMINISTIC),
          jobs: int = 1, channel_stds=(), relative_stds=()) -> tuple[pd.DataFrame,
                                                                     pd.DataFrame,
                                                                     pd.DataFrame]:
    """Train and analyze every (model, mode, variant, seed); the joined results table and
    the per-seed metrics.  The modes are ``deterministic``, ``noisy-<sigma>`` per noise
    std in ``noise_stds`` (trained with noise) and ``channel-<S>`` per std in
    ``channel_stds`` (the deterministic networks read through an analysis-time Gaussian
    channel: no training of their own) and ``relchannel-<S>`` per std in ``relative_stds``
    (the same channel with S in units of each layer's scale, ``noise_scale="layer"``).  ``jobs`` > 1 runs that many (model, mode, variant, seed) at once
    in worker processes (CPU only); every run is seeded on its own and the tables are in the
    same order, so they do not depend on it."""
    from _study_runs import run_parallel

    items = []
    for model in models:
        spec = sizes[model]
        depth = spec["config"][DEPTH_KEY[model]]
        layers = [f"{LAYER_PREFIX[model]}.{i}" for i in range(depth)]
        modes = ([("deterministic", 0.0, False)]
                 + [(f"noisy-{s:g}", s, has_noise_option(model)) for s in noise_stds]
                 + [(f"channel-{s:g}", s, False) for s in channel_stds]
                 + [(f"relchannel-{s:g}", s, False) for s in relative_stds])
        for mode, noise_std, trained_noise in modes:
            for norm, lam in norms:
                for seed in seeds:
                    items.append((model, spec, Variant(model, norm, lam), seed, mode, noise_std,
                                  trained_noise, layers, out, device, tuple(deterministic)))
    results = run_parallel(_run_one, jobs, items)
    return (pd.concat([table for table, _, _ in results], ignore_index=True),
            pd.DataFrame([metric for _, metric, _ in results]),
            pd.DataFrame([row for _, _, rows in results for row in rows]))


def summarize(table: pd.DataFrame, metrics: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seed summary and Welch/Holm comparison; a cell's model key is ``<model>/<mode>``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _study_common import compare_to_baselines

    table = table.assign(model=table["model"].astype(str).str.split(":").str[-1])
    table = table.assign(model=table["model"] + "/" + table["study_mode"])
    summaries = []
    for model, part in table.groupby("model", sort=False):
        metric = "val_loss" if model.startswith("gpt") else "test_accuracy"
        summaries.append(seed_summary(part, metric))
    summary = pd.concat(summaries, ignore_index=True)
    comparison = compare_to_baselines(table, {m: "layer" for m in table["model"].unique()})
    out = []
    for df in (summary, comparison):
        split = df["model"].str.split("/", n=1)
        df = df.assign(model=split.str[0])
        df.insert(1, "mode", split.str[1])
        out.append(df)
    return out[0], out[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="study-out/gpu", type=Path,
                        help="run folder; a rerun resumes there")
    parser.add_argument("--quick", action="store_true",
                        help="tiny models on the CPU in seconds (a smoke test)")
    parser.add_argument("--device", default=None,
                        help="'cuda' (default when available; quick: 'cpu') or 'cpu'")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per variant (default 3; "
                        "quick 2)")
    parser.add_argument("--noise-std", type=float, nargs="+", default=None,
                        help="std(s) of the noisy modes' Gaussian noise after every block "
                             "(default 1 and 4; quick 1): one noisy mode per value")
    parser.add_argument("--no-noisy", action="store_true",
                        help="no trained-noise modes (the deterministic mode, and the "
                             "channel modes of --channel-std)")
    parser.add_argument("--channel-std", type=float, nargs="+", default=(),
                        help="also read the deterministic networks through an analysis-time "
                             "Gaussian channel of each std (modes channel-<S>; no training)")
    parser.add_argument("--channel-rel", type=float, nargs="+", default=(),
                        help="the same channel with S in units of each layer's own scale "
                             "(modes relchannel-<S>; analyze(noise_scale='layer'))")
    parser.add_argument("--models", default="gpt,vit", help="comma-separated: gpt, vit")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs trained and analyzed at once in worker processes, one "
                             "thread each (CPU only; default: the usable cores on a CPU, "
                             "1 with --quick or on a GPU)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="also write NAME_*.csv and NAME_environment.json here")
    parser.add_argument("--data-name", default="gpu",
                        help="NAME of the --data-dir files (default gpu; e.g. cpu_vit for a "
                             "CPU run of one model)")
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.quick else default_device())
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device}: torch sees no CUDA device here; use --device cpu "
                     f"(with --quick: the full size takes hours on a CPU)")
    seeds_n = args.seeds if args.seeds is not None else (2 if args.quick else 3)
    if seeds_n < 2:
        parser.error(f"--seeds must be >= 2 (a Welch test needs two seeds a side), got {seeds_n}")
    noise_stds = args.noise_std or ([1.0] if args.quick else [1.0, 4.0])
    if not all(s > 0 for s in noise_stds):
        parser.error(f"--noise-std must all be > 0, got {noise_stds}")
    if args.no_noisy:
        if args.noise_std:
            parser.error("--no-noisy and --noise-std contradict each other; give one")
        noise_stds = []
    for flag, values in (("--channel-std", args.channel_std), ("--channel-rel", args.channel_rel)):
        if not all(s > 0 for s in values):
            parser.error(f"{flag} must all be > 0, got {list(values)}")
    if not args.data_name.replace("_", "").isalnum():
        parser.error(f"--data-name {args.data_name!r}: accepted are letters, digits and '_'")
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = [m for m in models if m not in FULL]
    if unknown or not models:
        parser.error(f"--models {args.models!r}: accepted names are {sorted(FULL)}")
    from _study_runs import usable_cores

    jobs = args.jobs if args.jobs is not None else (
        usable_cores() if device == "cpu" and not args.quick else 1)
    if jobs < 1 or (jobs > 1 and device != "cpu"):
        parser.error(f"--jobs {jobs}: accepted is an int >= 1, and 1 on a GPU (one device "
                     f"runs one job at a time here)")
    if device == "cpu":
        torch.set_num_threads(1)
    if device.startswith("cuda"):
        # deterministic kernels where torch has them, so a rerun on the same GPU repeats
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    from ibtools.environment import describe_environment
    from ibtools.results import write_atomic

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    sizes = QUICK if args.quick else FULL
    start, cpu = time.perf_counter(), cpu_seconds()
    table, metrics, scale = study(out, sizes, QUICK_NORMS if args.quick else NORMS,
                           list(range(seeds_n)), noise_stds, device, models,
                           QUICK_DETERMINISTIC if args.quick else DETERMINISTIC, jobs=jobs,
                           channel_stds=tuple(args.channel_std),
                           relative_stds=tuple(args.channel_rel))
    summary, comparison = summarize(table, metrics)
    ceiling = table.assign(model=table["model"].astype(str).str.split(":").str[-1]).groupby(
        ["model", "study_mode", "setting", "layer"], sort=False)["at_ceiling"].mean().reset_index()
    env = describe_environment(device)
    env["run"] = {"wall_seconds": round(time.perf_counter() - start, 1),
                  "cpu_seconds": round(cpu_seconds() - cpu, 1), "quick": args.quick,
                  "seeds": seeds_n, "noise_std": noise_stds, "models": list(models),
                  "channel_std": list(args.channel_std), "channel_rel": list(args.channel_rel),
                  "jobs": jobs,
                  "train_time_noise": {m: has_noise_option(m) for m in models},
                  "sizes": {m: sizes[m] for m in models}}
    files = {"results.csv": table, "metrics.csv": metrics, "summary.csv": summary,
             "comparison.csv": comparison, "ceiling.csv": ceiling, "scale.csv": scale}
    for name, df in files.items():
        write_csv(df, out / name)
    write_atomic(out / "environment.json", json.dumps(env, indent=2, default=str) + "\n")
    if args.data_dir is not None:
        args.data_dir.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.csv", "summary.csv", "comparison.csv", "ceiling.csv",
                     "scale.csv"):
            write_csv(files[name], args.data_dir / f"{args.data_name}_{name}")
        write_atomic(args.data_dir / f"{args.data_name}_environment.json",
                     json.dumps(env, indent=2, default=str) + "\n")
    from ibtools import compare

    counts = compare.summarize(comparison, by=["model", "mode", "setting"])
    pd.set_option("display.width", 200)
    say(counts.to_string(index=False))
    say("share of rows with I(X;T) at the ln n ceiling (the sample cannot resolve them):")
    say(ceiling.round(2).to_string(index=False))
    say(f"[gpu-study] {len(table)} rows on {device}; {env['run']['wall_seconds']:.0f} s wall, "
        f"{env['run']['cpu_seconds']:.0f} s CPU; outputs in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
