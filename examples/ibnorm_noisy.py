"""IBNorm-T against LayerNorm in noisy networks: a comparison where a difference can be information.

    python examples/ibnorm_noisy.py [--out study-out/noisy] [--quick] [--seeds 10]
                                    [--data-dir docs/data]

For a deterministic network on n distinct inputs the layer-wise IB value is the same number
for every network, so the deterministic study can only compare estimator resolutions.  Here
every hidden block adds Gaussian noise of std sigma after its activation, in training and in
evaluation (``ibtools.models.MLP(noise_std=sigma)``), which makes I(X;T_l) and I(T_l;Y) finite
properties of the network.  They are measured with the mixture estimator's noisy-network form,
:func:`ibtools.noisy.noisy_network_information` (Goldfeld et al. 2019): h(T_l | X) from
``N_PATHS`` noise paths per input, h(T_l) from all of them, each quantity to a Monte Carlo
standard error below ``MC_TOLERANCE`` nats.

Setup: funnel MLPs 64-32-24-16-12-10 (tanh, the deterministic study's architecture) on
scikit-learn's digits with LayerNorm, IBNorm-T lambda=1 and IBNorm-T lambda=4, each trained
with noise at two sigmas, ``--seeds`` seeds (the model seed also seeds the noise stream),
AdamW lr 5e-3, batch 64, 20 epochs, a checkpoint after every epoch.  Measured on the 450
test digits at each block output: I(X;T), I(T;Y), I(T_prev;T) and the layer-wise IB value
I(T;Y) - beta I(T_prev;T) (beta = 0.1).

Two comparisons, each IBNorm-T variant against LayerNorm per (sigma, layer, quantity), all
cells in one family (:mod:`ibtools.compare`: Welch over seeds, Holm, minimum effect 0.01 nat):

- **matched noise**: the final checkpoints, same sigma;
- **matched accuracy**: at each sigma the target is the lowest final seed-mean test accuracy
  among the three variants; every variant is measured at its checkpoint whose seed-mean test
  accuracy is closest to the target, and a variant whose closest checkpoint misses the target
  by more than ``ACCURACY_TOLERANCE`` is not compared ("not matched").

Writes into OUT: ``checkpoints/`` (training runs), ``analysis/`` (one CSV per measured
checkpoint, so a rerun resumes where it stopped), ``seeds.csv`` (every measured row),
``accuracy.csv``, ``summary.csv``, ``comparison.csv``, ``environment.json``; with
``--data-dir`` also ``noisy_*.csv`` and ``noisy_environment.json`` there (the tables of
``examples/study_tables.py``).  ``--quick`` is a smoke test of a few seconds.

The noise-path bias check: ``--n-paths K`` measures the same checkpoints with K paths into
``analysis_paths<K>/`` (its tables get the suffix ``_paths<K>``), and ``--paths-check``
tabulates every K measured (``paths_check.csv``; ``noisy_paths_check.csv`` with
``--data-dir``).  The shipped check: ``--seeds 3 --sigmas 0.2 --n-paths 16``, then
``--n-paths 4``, then ``--paths-check``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _study_common import BETA_SWEEP, Variant, say, write_csv

VARIANTS = (Variant("mlp", "layer", 0.0), Variant("mlp", "ib-T", 1.0), Variant("mlp", "ib-T", 4.0))
QUICK_VARIANTS = (Variant("mlp", "layer", 0.0), Variant("mlp", "ib-T", 1.0))
BETA = 0.1
#: Largest |seed-mean accuracy - target| at which a checkpoint counts as accuracy-matched.
#: One noisy evaluation of 450 digits has a binomial sd near 0.013; over 10 seeds about 0.004.
ACCURACY_TOLERANCE = 0.01
QUANTITIES = ("ib_value", "i_ty", "i_prev_t", "i_xt")
FULL = {"sigmas": (0.1, 0.2), "epochs": 20, "widths": (32, 24, 16, 12), "max_samples": 450,
        "n_paths": 8, "mc_tolerance": 0.01, "seeds": 10}
QUICK = {"sigmas": (0.2,), "epochs": 2, "widths": (16, 8), "max_samples": 60,
         "n_paths": 2, "mc_tolerance": 0.05, "seeds": 2}
TRAINING = {"lr": 5e-3, "batch_size": 64, "checkpoint_every": 22}  # 22 steps = one epoch


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def variant_label(norm: str, lam: float) -> str:
    return f"{norm}, λ={lam:g}" if norm.startswith("ib-") else norm


def run_dir(out: Path, sigma: float, variant: Variant, seed: int) -> Path:
    return out / "checkpoints" / f"sigma{sigma:g}" / variant.tag / f"seed{seed}"


def train_runs(out: Path, cfg: dict, variants, seeds, device: str) -> None:
    """Train every (sigma, variant, seed); a run with ``history.json`` is finished, skipped."""
    from ibtools.models import train

    for sigma in cfg["sigmas"]:
        for variant in variants:
            for seed in seeds:
                path = run_dir(out, sigma, variant, seed)
                if (path / "history.json").exists():
                    continue
                config = {"widths": list(cfg["widths"]), "activation": "tanh",
                          "norm": variant.norm, "noise_std": sigma, "noise_seed": seed}
                if not variant.is_baseline:
                    config["lam"] = variant.lam
                start, cpu = time.perf_counter(), cpu_seconds()
                history = train("mlp", "digits", epochs=cfg["epochs"], seed=seed, out_dir=path,
                                model_config=config, device=device, **TRAINING)
                say(f"[train] sigma={sigma:g} {variant.tag} seed {seed}: "
                    f"{time.perf_counter() - start:.1f} s wall, {cpu_seconds() - cpu:.1f} s CPU, "
                    f"accuracy {history[-1]['test_accuracy']:.3f}")


def accuracy_curves(out: Path, cfg: dict, variants, seeds) -> pd.DataFrame:
    """Test accuracy of every checkpoint (as training measured it, noise on)."""
    from ibtools.probes import load_model

    rows = []
    for sigma in cfg["sigmas"]:
        for variant in variants:
            for seed in seeds:
                cache = run_dir(out, sigma, variant, seed) / "accuracy.csv"
                if not cache.exists():
                    part = []
                    for ckpt in sorted(cache.parent.glob("step_*.pt")):
                        _, info = load_model(ckpt)
                        part.append({"step": int(info["meta"]["step"]),
                                     "test_accuracy": float(info["meta"]["test_accuracy"])})
                    write_csv(pd.DataFrame(part), cache)
                part = pd.read_csv(cache)
                rows.append(part.assign(sigma=sigma, norm=variant.norm, lam=variant.lam,
                                        seed=seed))
    return pd.concat(rows, ignore_index=True)


def matched_steps(curves: pd.DataFrame, tolerance: float = ACCURACY_TOLERANCE) -> pd.DataFrame:
    """The accuracy-matching rule, per sigma and variant.

    The target at a sigma is the lowest final seed-mean accuracy among its variants; each
    variant's matched checkpoint is the step whose seed-mean accuracy is closest to the target
    (the earliest such step on a tie), ``matched`` whether it is within ``tolerance``.
    Returns one row per (sigma, norm, lam) with the final step and accuracy too.
    """
    mean = curves.groupby(["sigma", "norm", "lam", "step"], sort=False)["test_accuracy"].agg(
        ["mean", "std", "count"]).reset_index()
    rows = []
    for sigma, at_sigma in mean.groupby("sigma", sort=False):
        finals = at_sigma.loc[at_sigma.groupby(["norm", "lam"], sort=False)["step"].idxmax()]
        target = float(finals["mean"].min())
        for (norm, lam), g in at_sigma.groupby(["norm", "lam"], sort=False):
            g = g.sort_values("step")
            final = g.iloc[-1]
            gap = (g["mean"] - target).abs()
            best = g.loc[gap.idxmin()]
            rows.append({"sigma": sigma, "norm": norm, "lam": lam, "n_seeds": int(final["count"]),
                         "final_step": int(final["step"]),
                         "final_accuracy_mean": float(final["mean"]),
                         "final_accuracy_sd": float(final["std"]),
                         "target_accuracy": target, "matched_step": int(best["step"]),
                         "matched_accuracy_mean": float(best["mean"]),
                         "matched_accuracy_sd": float(best["std"]),
                         "matched": bool(abs(float(best["mean"]) - target) <= tolerance)})
    return pd.DataFrame(rows)


def measure(checkpoint: Path, cache: Path, x, y, layers, cfg: dict, device: str) -> pd.DataFrame:
    """Noisy-network I(X;T), I(T;Y), I(T_prev;T) at every layer of one checkpoint (cached)."""
    if cache.exists():
        return pd.read_csv(cache)
    from ibtools.noisy import noisy_network_information
    from ibtools.probes import load_model

    model, info = load_model(checkpoint, map_location=device)
    model.eval()
    seed = int(info["meta"]["seed"])
    start, cpu = time.perf_counter(), cpu_seconds()
    result = noisy_network_information(model, x.to(device), y.to(device), layers,
                                       n_paths=cfg["n_paths"], seed=seed,
                                       mc_tolerance=cfg["mc_tolerance"])
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    rows = []
    for index, name in enumerate(layers):
        r = result[name]
        rows.append({"layer": name, "layer_index": index, "step": int(info["meta"]["step"]),
                     "test_accuracy": float(info["meta"]["test_accuracy"]),
                     "i_xt": r.i_xt.value, "i_ty": r.i_ty.value, "i_prev_t": r.i_prev_t.value,
                     "se_xt": r.i_xt.details["mc_se"], "se_ty": r.i_ty.details["mc_se"],
                     "se_prev_t": r.i_prev_t.details["mc_se"],
                     "ib_value": r.i_ty.value - BETA * r.i_prev_t.value,
                     "se_ib": math.hypot(r.i_ty.details["mc_se"],
                                         BETA * r.i_prev_t.details["mc_se"]),
                     "h_t": r.details["h_t"], "h_t_given_x": r.details["h_t_given_x"],
                     "draws": r.details["draws"], "n_paths": r.details["n_paths"],
                     "n_samples": int(x.shape[0]),
                     "flags": "; ".join(r.i_xt.flags + r.i_ty.flags + r.i_prev_t.flags),
                     "seconds": wall, "cpu_seconds": cpu})
    table = pd.DataFrame(rows)
    write_csv(table, cache)
    return table


def measure_all(out: Path, cfg: dict, variants, seeds, steps: pd.DataFrame, device: str,
                layers) -> pd.DataFrame:
    """Measure every run at its final and (when different) its accuracy-matched checkpoint."""
    from ibtools.models.data import load_data

    data = load_data("digits", "vector")
    x, y = data.x_test[:cfg["max_samples"]], data.y_test[:cfg["max_samples"]]
    tables = []
    for sigma in cfg["sigmas"]:
        for variant in variants:
            pick = steps[(steps["sigma"] == sigma) & (steps["norm"] == variant.norm)
                         & (steps["lam"] == variant.lam)].iloc[0]
            wanted = {int(pick["final_step"]): ["final"]}
            wanted.setdefault(int(pick["matched_step"]), []).append("matched")
            for seed in seeds:
                folder = run_dir(out, sigma, variant, seed)
                cache_dir = out / cfg["analysis_dir"] / f"sigma{sigma:g}" / variant.tag / f"seed{seed}"
                for step, roles in wanted.items():
                    start = time.perf_counter()
                    fresh = not (cache_dir / f"step_{step:06d}.csv").exists()
                    t = measure(folder / f"step_{step:06d}.pt", cache_dir / f"step_{step:06d}.csv",
                                x, y, layers, cfg, device)
                    if fresh:
                        say(f"[measure] sigma={sigma:g} {variant.tag} seed {seed} step {step}: "
                            f"{time.perf_counter() - start:.1f} s wall, "
                            f"{t['cpu_seconds'].iloc[0]:.1f} s CPU")
                    for role in roles:
                        tables.append(t.assign(sigma=sigma, norm=variant.norm, lam=variant.lam,
                                               seed=seed, checkpoint=role))
    return pd.concat(tables, ignore_index=True)


def summarize(seeds_table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds per (checkpoint role, sigma, variant, layer), with the Monte
    Carlo standard error of each mean (root of the summed squared per-seed errors, over n)."""
    keys = ["checkpoint", "sigma", "norm", "lam", "layer", "layer_index"]
    g = seeds_table.groupby(keys, sort=False)
    parts = {"n_seeds": g["seed"].nunique(), "step": g["step"].first(),
             "test_accuracy_mean": g["test_accuracy"].mean(),
             "test_accuracy_sd": g["test_accuracy"].std(ddof=1)}
    for q, se in (("ib_value", "se_ib"), ("i_ty", "se_ty"), ("i_prev_t", "se_prev_t"),
                  ("i_xt", "se_xt")):
        parts[f"{q}_mean"] = g[q].mean()
        parts[f"{q}_sd"] = g[q].std(ddof=1)
        parts[f"{q}_mc_se"] = g[se].apply(lambda s: math.sqrt(float((s ** 2).sum())) / len(s))
    return pd.DataFrame(parts).reset_index()


def compare(seeds_table: pd.DataFrame, steps: pd.DataFrame,
            quantities=QUANTITIES) -> pd.DataFrame:
    """IBNorm-T against LayerNorm per (comparison, sigma, variant, layer, quantity); one
    Holm family over every cell.  Unmatched variants at matched accuracy are not tested."""
    from ibtools import compare as cmp

    matched = {(r["sigma"], r["norm"], r["lam"]): r["matched"] for r in steps.to_dict("records")}
    cells, skipped = [], []
    for role, kind in (("final", "matched noise"), ("matched", "matched accuracy")):
        part = seeds_table[seeds_table["checkpoint"] == role]
        for sigma, at_sigma in part.groupby("sigma", sort=False):
            base = at_sigma[at_sigma["norm"] == "layer"]
            for (norm, lam), mine in at_sigma[at_sigma["norm"] != "layer"].groupby(
                    ["norm", "lam"], sort=False):
                for (layer, index), g in mine.groupby(["layer", "layer_index"], sort=False):
                    b = base[base["layer"] == layer]
                    for q in quantities:
                        keys = {"comparison": kind, "sigma": sigma, "norm": norm, "lam": lam,
                                "layer": layer, "layer_index": index, "quantity": q,
                                "step": int(g["step"].iloc[0]),
                                "baseline_step": int(b["step"].iloc[0])}
                        ok = role == "final" or (matched[(sigma, norm, lam)]
                                                 and matched[(sigma, "layer", 0.0)])
                        (cells if ok else skipped).append((keys, g[q].to_numpy(),
                                                           b[q].to_numpy()))
    table = cmp.compare_cells(cells)
    if skipped:
        extra = pd.DataFrame([{**k, **cmp.welch(a, b)} for k, a, b in skipped])
        extra["p_adj"] = math.nan
        extra["verdict"] = "not matched"
        table = pd.concat([table, extra], ignore_index=True)
    return table.rename(columns={"mean_a": "ib_mean", "sd_a": "ib_sd", "mean_b": "baseline_mean",
                                 "sd_b": "baseline_sd", "n_a": "n_ib", "n_b": "n_baseline"})


#: The two IB values of the beta sweep: the study's layer-wise one (compression measured
#: against the layer before) and the classic Lagrangian (compression against the input).
IB_KINDS = {"layerwise": "i_prev_t", "classic": "i_xt"}


def beta_sweep(seeds_table: pd.DataFrame, steps: pd.DataFrame, betas=BETA_SWEEP) -> pd.DataFrame:
    """The IB value's comparison at every beta, both kinds, from the recorded terms.

    The IB value is ``i_ty - beta * i_prev_t`` (``layerwise``, the study's) or
    ``i_ty - beta * i_xt`` (``classic``) of every seed's row, so the sweep needs no new
    estimates.  Each (kind, beta) is its own Holm family over the IB-value cells of both
    comparisons, the family a study at that beta would test; the main comparison's family
    also holds the three terms, so its beta = 0.1 verdicts can differ from this one's.

    Returns
    -------
    pandas.DataFrame
        :func:`compare`'s columns with ``quantity == "ib_value"`` plus ``ib_kind`` and
        ``beta``, one row per (kind, beta, comparison, sigma, variant, layer).
    """
    parts = []
    for kind, term in IB_KINDS.items():
        for beta in betas:
            beta = float(beta)
            if not beta >= 0:
                raise ValueError(f"betas: every beta must be >= 0, got {beta!r}")
            at_beta = seeds_table.assign(ib_value=seeds_table["i_ty"] - beta * seeds_table[term])
            parts.append(compare(at_beta, steps, quantities=("ib_value",))
                         .assign(ib_kind=kind, beta=beta))
    return pd.concat(parts, ignore_index=True)


def retable(folder: Path, prefix: str = "noisy_") -> dict:
    """Recompute the comparison and the beta sweep from ``<prefix>seeds.csv`` and
    ``<prefix>accuracy.csv`` in ``folder`` (no training, no estimates): writes
    ``<prefix>beta_sweep.csv`` and returns ``{"comparison": ..., "beta_sweep": ...}``.

    The comparison is returned, not written: it is the check that the shipped seeds
    reproduce the shipped ``<prefix>comparison.csv``.
    """
    paths = {name: folder / f"{prefix}{name}.csv" for name in ("seeds", "accuracy")}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"--retable: {folder} lacks {', '.join(missing)}; a run of "
                                f"this script writes them")
    seeds_table = pd.read_csv(paths["seeds"])
    steps = pd.read_csv(paths["accuracy"])
    sweep = beta_sweep(seeds_table, steps)
    write_csv(sweep, folder / f"{prefix}beta_sweep.csv")
    return {"comparison": compare(seeds_table, steps), "beta_sweep": sweep}


def paths_check(out: Path) -> pd.DataFrame:
    """The noise-path bias check: every final checkpoint measured at more than one number of
    paths K (``analysis/`` and ``analysis_paths<K>/``), seed means per (K, sigma, variant,
    layer) over the seeds measured at every K, and IBNorm-T minus LayerNorm (``d_*``)."""
    tags = {v.tag: v for v in VARIANTS + QUICK_VARIANTS}
    rows = []
    for folder in sorted(out.glob("analysis*")):
        for path in folder.glob("sigma*/*/seed*/step_*.csv"):
            sigma, tag, seed = path.parts[-4:-1]
            finals = sorted((out / "checkpoints" / sigma / tag / seed).glob("step_*.pt"))
            if tag in tags and finals and finals[-1].stem == path.stem:
                t = pd.read_csv(path)
                rows.append(t.assign(sigma=float(sigma.removeprefix("sigma")),
                                     norm=tags[tag].norm, lam=tags[tag].lam, seed=seed))
    if not rows:
        return pd.DataFrame()
    table = pd.concat(rows, ignore_index=True)
    keys = ["sigma", "norm", "lam", "seed"]
    n_k = table.groupby(keys)["n_paths"].transform("nunique")
    table = table[n_k == table["n_paths"].nunique()]  # seeds measured at every K
    means = table.groupby(["n_paths", "sigma", "norm", "lam", "layer"], sort=True).agg(
        n_seeds=("seed", "nunique"), **{f"{q}_mean": (q, "mean") for q in QUANTITIES}
    ).reset_index()
    base = means[means["norm"] == "layer"].set_index(["n_paths", "sigma", "layer"])
    for q in QUANTITIES:
        ref = base[f"{q}_mean"].reindex(
            pd.MultiIndex.from_frame(means[["n_paths", "sigma", "layer"]])).to_numpy()
        means[f"d_{q}"] = means[f"{q}_mean"].to_numpy() - ref
    return means


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="study-out/noisy", type=Path,
                        help="run folder; a rerun resumes there")
    parser.add_argument("--quick", action="store_true", help="a smoke test of a few seconds")
    parser.add_argument("--seeds", type=int, default=None, help="model seeds per variant "
                        "(default 10; quick 2)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="also write noisy_*.csv and noisy_environment.json here")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda'")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--sigmas", type=float, nargs="+", default=None,
                        help="noise stds to train and measure (default 0.1 0.2; quick 0.2)")
    parser.add_argument("--n-paths", type=int, default=None,
                        help="noise paths per input (default 8; quick 2); another value "
                             "measures into analysis_paths<K>/, a check of the K bias")
    parser.add_argument("--paths-check", action="store_true",
                        help="only tabulate the runs measured at several --n-paths "
                             "(paths_check.csv; noisy_paths_check.csv with --data-dir)")
    parser.add_argument("--retable", type=Path, default=None, metavar="DIR",
                        help="only recompute the tables from DIR's noisy_seeds.csv and "
                             "noisy_accuracy.csv (e.g. docs/data): writes noisy_beta_sweep.csv "
                             "and checks the comparison against noisy_comparison.csv")
    args = parser.parse_args(argv)
    if args.retable is not None:
        tables = retable(args.retable)
        shipped = args.retable / "noisy_comparison.csv"
        if shipped.exists():
            old, new = pd.read_csv(shipped), tables["comparison"]
            same = (len(old) == len(new) and (old["verdict"] == new["verdict"]).all()
                    and all(np.allclose(old[c], new[c], rtol=1e-9, atol=1e-12, equal_nan=True)
                            for c in ("diff", "p", "p_adj")))
            say(f"[noisy] comparison recomputed from the seeds: "
                f"{'equal to' if same else 'DIFFERS from'} {shipped}")
            if not same:
                return 1
        counts = tables["beta_sweep"].groupby(["ib_kind", "comparison", "beta", "verdict"]).size()
        say(counts.unstack(fill_value=0).to_string())
        return 0
    if args.paths_check:
        check = paths_check(args.out)
        if check.empty or check["n_paths"].nunique() < 2:
            parser.error(f"--paths-check: {args.out} holds no final checkpoint measured at two "
                         f"or more --n-paths; run the study again with another --n-paths first")
        write_csv(check, args.out / "paths_check.csv")
        if args.data_dir is not None:
            write_csv(check, args.data_dir / "noisy_paths_check.csv")
        say(check.round(3).to_string(index=False))
        return 0
    cfg = dict(QUICK if args.quick else FULL)
    if args.sigmas is not None:
        bad = [s for s in args.sigmas if not s > 0]
        if bad:
            parser.error(f"--sigmas must all be > 0 (noise stds), got {bad}")
        cfg["sigmas"] = tuple(args.sigmas)
    default_paths = cfg["n_paths"]
    if args.n_paths is not None:
        if args.n_paths < 2:
            parser.error(f"--n-paths must be >= 2 (h(T|X) is a mixture over paths), got "
                         f"{args.n_paths}")
        cfg["n_paths"] = args.n_paths
    cfg["analysis_dir"] = ("analysis" if cfg["n_paths"] == default_paths
                           else f"analysis_paths{cfg['n_paths']}")
    seeds_n = cfg["seeds"] if args.seeds is None else args.seeds
    if seeds_n < 2:
        parser.error(f"--seeds must be >= 2 (a Welch test needs two seeds a side), got {seeds_n}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    from ibtools.environment import describe_environment

    variants = QUICK_VARIANTS if args.quick else VARIANTS
    seeds = list(range(seeds_n))
    layers = [f"layers.{i}" for i in range(len(cfg["widths"]))]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    start, cpu = time.perf_counter(), cpu_seconds()
    train_runs(out, cfg, variants, seeds, args.device)
    trained = time.perf_counter()
    curves = accuracy_curves(out, cfg, variants, seeds)
    steps = matched_steps(curves)
    seeds_table = measure_all(out, cfg, variants, seeds, steps, args.device, layers)
    summary = summarize(seeds_table)
    comparison = compare(seeds_table, steps)
    sweep = beta_sweep(seeds_table, steps)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    env = describe_environment(args.device)
    env["run"] = {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                  "training_wall_seconds": round(trained - start, 1),
                  "load_average_at_end": list(_loadavg()), "quick": args.quick,
                  "seeds": seeds_n, "sigmas": list(cfg["sigmas"]), "epochs": cfg["epochs"],
                  "n_paths": cfg["n_paths"], "mc_tolerance": cfg["mc_tolerance"],
                  "max_samples": cfg["max_samples"], "beta": BETA,
                  "accuracy_tolerance": ACCURACY_TOLERANCE, **TRAINING}
    # a run at another K (the bias check) keeps the main run's files: its own get a suffix
    suffix = cfg["analysis_dir"].removeprefix("analysis")
    files = {f"seeds{suffix}.csv": seeds_table, f"accuracy{suffix}.csv": steps,
             f"summary{suffix}.csv": summary, f"comparison{suffix}.csv": comparison,
             f"beta_sweep{suffix}.csv": sweep,
             f"environment{suffix}.json": env}
    from ibtools.results import write_atomic

    folders = [out] + ([args.data_dir] if args.data_dir is not None else [])
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        prefix = "" if folder is out else "noisy_"
        for name, obj in files.items():
            if isinstance(obj, dict):
                write_atomic(folder / f"{prefix}{name}", json.dumps(obj, indent=2) + "\n")
            else:
                write_csv(obj, folder / f"{prefix}{name}")
    pd.set_option("display.width", 200)
    say(steps.round(3).to_string(index=False))
    counts = comparison.groupby(["comparison", "quantity", "verdict"]).size().unstack(fill_value=0)
    say(counts.to_string())
    say(f"[noisy] {len(seeds_table)} rows; {wall:.0f} s wall, {cpu:.0f} s CPU "
        f"(training {trained - start:.0f} s wall); outputs in {out}")
    return 0


def _loadavg() -> tuple:
    try:
        import os

        return tuple(round(v, 2) for v in os.getloadavg())
    except OSError:
        return ()


if __name__ == "__main__":
    raise SystemExit(main())
