"""Regenerate the tables of ``docs/ibnorm-study.md`` from the CSVs in ``docs/data/``.

    python examples/study_tables.py [--data-dir docs/data] [--table NAME ...]
    python examples/study_tables.py --from-run study-out/mlp_digits --data-dir docs/data

Every table of the study is printed as markdown from one small CSV, so a number in the doc
can be traced to a file and a rerun of the study regenerates the doc's tables.  With
``--from-run DIR`` the script first converts a study run's outputs (``summary.csv`` and
``comparison.csv`` of ``ibnorm_mlp_digits.py`` or ``ibnorm_tiny_lm.py``) into the CSVs it
reads, then prints the tables.  ``--list`` names the tables and their files.
"""

from __future__ import annotations

import argparse
import functools
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

DATA_DIR = Path(__file__).resolve().parents[1] / "docs" / "data"
NORM_LABELS = {"layer": "LayerNorm", "batch": "BatchNorm", "rms": "RMSNorm",
               "ib-S": "IBNorm-S", "ib-L": "IBNorm-L", "ib-T": "IBNorm-T"}
MODEL_LABELS = {"gpt": "GPT", "llama": "LLaMA", "mlp": "MLP", "vit": "ViT"}


def setting_label(setting: str) -> str:
    """Short column label of an estimator setting: ``kde(noise_var=0.01)`` -> ``KDE 0.01``."""
    m = re.fullmatch(r"(\w+)\((.*)\)(?:@noise_(std|rel)=(.+))?", str(setting))
    if not m:
        return str(setting)
    method, params = m.group(1), dict(p.split("=", 1) for p in m.group(2).split(",") if "=" in p)
    if m.group(4) is not None:  # read through an analysis-time channel of std S
        unit = " x scale" if m.group(3) == "rel" else ""
        return f"{setting_label(f'{method}()')} S={m.group(4)}{unit}"
    if method == "binning":
        return f"binning {params.get('bin_width', params.get('n_bins', ''))}".strip()
    if method in ("kde", "mixture"):
        label = f"{'KDE' if method == 'kde' else 'mixture'} {params.get('noise_var', '')}".strip()
        return label + (" lower" if params.get("bound") == "lower" else "")
    if method == "ksg":
        return f"KSG k={params.get('k', 3)}" + (" copula" if params.get("transform") == "copula" else "")
    return str(setting)


def variant_label(norm: str, lam) -> str:
    """``IBNorm-T, λ=1`` for IBNorm, the plain norm name for a baseline."""
    name = NORM_LABELS.get(norm, norm)
    return f"{name}, λ={float(lam):g}" if str(norm).startswith("ib-") else name


def pm(mean, sd=None, digits: int = 3) -> str:
    """``mean ± sd`` as the doc prints it (blank for a missing mean)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if sd is None or (isinstance(sd, float) and math.isnan(sd)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A pipe table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def grid(df: pd.DataFrame, row_keys: list[str], column: str, cell, row_label, first: str,
         column_label=str) -> str:
    """Pivot ``df``: one row per distinct ``row_keys`` (input order), one column per value
    of ``column`` (input order), ``cell(record)`` in each."""
    columns = list(dict.fromkeys(df[column]))
    rows = []
    for key, group in df.groupby(row_keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        by_col = {r[column]: r for r in group.to_dict("records")}
        rows.append([row_label(*key)] + [cell(by_col[c]) if c in by_col else "" for c in columns])
    return markdown([first] + [column_label(c) for c in columns], rows)


def t_accuracy(path: Path) -> str:
    df = pd.read_csv(path)
    df["column"] = ["baseline" if not str(n).startswith("ib-") else f"lambda {lam:g}"
                    for n, lam in zip(df["norm"], df["lam"])]
    return grid(df, ["norm"], "column", lambda r: pm(r["test_accuracy_mean"], r["test_accuracy_sd"]),
                lambda n: NORM_LABELS.get(n, n), "norm")


def _ib_grid(df: pd.DataFrame, row_keys, row_label, first) -> str:
    return grid(df, row_keys, "setting", lambda r: pm(r["ib_value_mean"], r["ib_value_sd"]),
                row_label, first, setting_label)


def t_ib_layers3(path: Path) -> str:
    return _ib_grid(pd.read_csv(path), ["norm", "lam"], variant_label,
                    "variant")


def _counts(df: pd.DataFrame) -> str:
    counts = [c for c in df.columns if c not in ("model", "setting")]
    with_model = df["model"].nunique() > 1
    header = (["model"] if with_model else []) + ["setting"] + counts
    rows = [([MODEL_LABELS.get(r["model"], r["model"])] if with_model else [])
            + [setting_label(r["setting"])] + [str(int(r[c])) for c in counts]
            for r in df.to_dict("records")]
    return markdown(header, rows)


def t_counts(path: Path) -> str:
    """Verdict counts per (model,) setting: the first edition's seed-range rule or
    ibtools.compare's Welch + Holm + minimum effect, whichever the CSV holds."""
    return _counts(pd.read_csv(path))


def t_why(path: Path) -> str:
    df = pd.read_csv(path)
    rows = [[variant_label(r["norm"], r["lam"]), setting_label(r["setting"]),
             f"{r['i_ty_mean']:.3f}", f"{r['i_prev_t_mean']:.3f}"] for r in df.to_dict("records")]
    return markdown(["variant", "setting", "I(T;Y)", "I(T_prev;T)"], rows)


def t_terms(path: Path) -> str:
    """I(T;Y) / I(T_prev;T) (seed means) per variant (rows) and setting (columns)."""
    return grid(pd.read_csv(path), ["norm", "lam"], "setting",
                lambda r: f"{r['i_ty_mean']:.3f} / {r['i_prev_t_mean']:.3f}", variant_label,
                "variant", setting_label)


def t_lm_loss(path: Path) -> str:
    df = pd.read_csv(path)
    df["column"] = ["baseline" if not str(n).startswith("ib-") else variant_label(n, lam)
                    for n, lam in zip(df["norm"], df["lam"])]
    base = dict(zip(df.loc[df["column"] == "baseline", "model"],
                    df.loc[df["column"] == "baseline", "norm"]))
    return grid(df, ["model"], "column", lambda r: pm(r["val_loss_mean"], r["val_loss_sd"]),
                lambda m: f"{MODEL_LABELS.get(m, m)} ({NORM_LABELS.get(base.get(m), '?')})", "model")


def t_lm_ib(path: Path) -> str:
    return _ib_grid(pd.read_csv(path), ["model", "layer", "norm", "lam"],
                    lambda m, layer, n, lam: f"{MODEL_LABELS.get(m, m)} `{layer}`, "
                                             f"{variant_label(n, lam)}", "layer, variant")


def t_bijection_layers(path: Path) -> str:
    """The bijection control at every layer: mean change (nets up / nets, verdict)."""
    df = pd.read_csv(path)
    return grid(df, ["layer", "setting"], "lam",
                lambda r: f"{r['d_ib_value_mean']:+.3f} ({r['n_up']}/{r['n_nets']}, {r['verdict']})",
                lambda layer, setting: f"{layer}, {setting_label(setting)}", "layer, setting",
                lambda lam: f"swap λ={lam:g}")


def t_bijection(path: Path, layer: str = "layers.3") -> str:
    """The swap's mean change of the IB value (nets up / nets) per setting and lambda, with
    the trained IBNorm-T net's difference beside it where the study measured one."""
    df = pd.read_csv(path)
    df = df[df["layer"] == layer]
    lams = sorted(df["lam"].unique())
    header = ["setting"] + [h for lam in lams for h in (f"swap λ={lam:g}", f"trained λ={lam:g}")]
    rows = []
    for setting, g in df.groupby("setting", sort=False):
        by = {r["lam"]: r for r in g.to_dict("records")}
        row = [setting_label(setting)]
        for lam in lams:
            r = by.get(lam)
            row.append("" if r is None else f"{r['d_ib_value_mean']:+.3f} ({r['n_up']}/{r['n_nets']})")
            row.append("" if r is None or pd.isna(r["trained_d_ib_value"])
                       else f"{r['trained_d_ib_value']:+.3f}")
        rows.append(row)
    return markdown(header, rows)


VERDICT_MARKS = {"higher": "H", "lower": "L", "no difference": "n", "below effect size": "e",
                 "not computed": "-"}
#: the trained-net study the second edition's tables read (relative to the data folder)
MLP_RUN = "mlp_v2"
#: the study's minimum effect (ibtools.compare.MIN_EFFECT_NATS)
MIN_EFFECT = 0.01


def _mark(verdict) -> str:
    return VERDICT_MARKS.get(str(verdict), "?")


def t_truth(path: Path) -> str:
    """The true layer-wise IB value of any deterministic net that keeps the n test inputs
    apart: I(T;Y) = H(Y) (plug-in over the labels), I(T_prev;T) = ln n."""
    df = pd.read_csv(path)
    counts = df["count"].to_numpy(dtype=float)
    n = counts.sum()
    h_y = float(-(counts / n * np.log(counts / n)).sum())
    rows = [[f"{beta:g}", f"{h_y:.4f}", f"{math.log(n):.4f}", f"{h_y - beta * math.log(n):.3f}"]
            for beta in BETAS]
    return markdown(["beta", "H(Y)", f"ln n (n = {int(n)})", "true IB value"], rows)


def t_diff_by_lambda(path: Path, norm: str = "ib-T") -> str:
    """IBNorm minus baseline IB value per layer and setting (rows) and lambda (columns),
    with the verdict: H higher, L lower, n no difference, e below the minimum effect."""
    df = pd.read_csv(path)
    df = df[df["norm"] == norm].sort_values(["layer_index"], kind="mergesort")
    return grid(df, ["layer", "setting"], "lam", lambda r: f"{r['diff']:+.3f} {_mark(r['verdict'])}",
                lambda layer, setting: f"{layer}, {setting_label(setting)}", "layer, setting",
                lambda lam: f"λ={lam:g}")


def t_beta_sign(path: Path, norm: str = "ib-T", layer: str = "layers.3") -> str:
    """Sign of the IBNorm minus baseline IB value at each beta (columns), per lambda and
    setting, with the verdict of that beta's family."""
    df = pd.read_csv(path)
    df = df[(df["norm"] == norm) & (df["layer"] == layer)].sort_values(["lam"], kind="mergesort")
    return grid(df, ["lam", "setting"], "beta",
                lambda r: f"{'+' if r['diff'] > 0 else '−' if r['diff'] < 0 else '0'}"
                          f"{abs(r['diff']):.3f} {_mark(r['verdict'])}",
                lambda lam, setting: f"λ={lam:g}, {setting_label(setting)}", "λ, setting",
                lambda beta: f"β={beta:g}")


def t_beta_counts(path: Path) -> str:
    """Over every cell (IBNorm flavour, lambda, layer, setting): how many have a positive or
    negative mean difference, and the verdicts, at each beta."""
    df = pd.read_csv(path)
    rows = []
    for beta, g in df.groupby("beta", sort=True):
        v = g["verdict"].value_counts()
        rows.append([f"{beta:g}", str(int((g["diff"] > 0).sum())), str(int((g["diff"] < 0).sum())),
                     str(int(v.get("higher", 0))), str(int(v.get("lower", 0))), str(len(g))])
    return markdown(["beta", "diff > 0", "diff < 0", "higher", "lower", "cells"], rows)


def t_robust(path: Path) -> str:
    """(Variant, layer) pairs whose mean difference has one sign under every setting."""
    df = pd.read_csv(path)
    df = df[df["overall"] != "mixed"]
    rows = [[variant_label(r["norm"], r["lam"]), r["layer"], r["overall"],
             f"{r['n_higher']}/{r['n_settings']}", f"{r['n_lower']}/{r['n_settings']}"]
            for r in df.to_dict("records")]
    return markdown(["variant", "layer", "under every setting", "higher", "lower"], rows)


def t_bijection_share(path: Path, layer: str = "layers.3") -> str:
    """The swap's mean change (true change 0) beside the trained IBNorm-T difference of the
    second-edition run (``MLP_RUN/mlp_comparison.csv`` next to ``path``), and the share
    (shown where the trained difference reaches the 0.01-nat minimum effect)."""
    swap = pd.read_csv(path)
    swap = swap[swap["layer"] == layer]
    trained = pd.read_csv(path.parent / MLP_RUN / "mlp_comparison.csv")
    trained = trained[(trained["norm"] == "ib-T") & (trained["layer"] == layer)]
    by = {(r["setting"], float(r["lam"])): r for r in trained.to_dict("records")}
    settings = [st for st in dict.fromkeys(swap["setting"]) if any(k[0] == st for k in by)]
    lams = sorted(swap["lam"].unique())
    header = ["setting"] + [h for lam in lams for h in (f"swap λ={lam:g}", f"trained λ={lam:g}",
                                                         "share")]
    rows = []
    for setting in settings:
        row = [setting_label(setting)]
        for lam in lams:
            s = swap[(swap["setting"] == setting) & (swap["lam"] == lam)]
            t = by.get((setting, float(lam)))
            d_swap = float(s["d_ib_value_mean"].iloc[0]) if len(s) else float("nan")
            d_trained = float("nan") if t is None else float(t["diff"])
            row += [f"{d_swap:+.3f}", f"{d_trained:+.3f} {_mark(t['verdict']) if t else ''}".strip(),
                    f"{100 * d_swap / d_trained:.0f}%" if abs(d_trained) >= MIN_EFFECT else ""]
        rows.append(row)
    return markdown(header, rows)


def t_lm_lambda(path: Path) -> str:
    """LM verdict counts per model and lambda (every layer and setting)."""
    df = pd.read_csv(path)
    rows = []
    for (model, norm, lam), g in df.groupby(["model", "norm", "lam"], sort=False):
        v = g["verdict"].value_counts()
        rows.append([MODEL_LABELS.get(model, model), variant_label(norm, lam),
                     *[str(int(v.get(k, 0))) for k in VERDICT_MARKS], str(len(g))])
    return markdown(["model", "variant", *VERDICT_MARKS, "cells"], rows)


def t_isa(path: Path) -> str:
    """Test accuracy per CPU instruction set (same code and seeds), from per-seed rows."""
    df = pd.read_csv(path)
    rows = []
    for (isa, norm, lam), g in df.groupby(["isa", "norm", "lam"], sort=False):
        acc = g["test_accuracy"]
        rows.append([str(isa), variant_label(norm, lam), str(len(g)), pm(acc.mean(), acc.std(ddof=1)),
                     f"{acc.min():.3f}", f"{acc.max():.3f}", f"{int((acc < 0.9).sum())}"])
    return markdown(["torch CPU capability", "variant", "seeds", "accuracy", "min", "max",
                     "seeds < 0.9"], rows)


def t_runtime(path: Path) -> str:
    """Measured run times of the study scripts (wall and CPU seconds, load average)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    return markdown(list(df.columns), [[str(v) for v in r] for r in df.itertuples(index=False)])


def _distinct_rows(run: Path, tags=None) -> pd.DataFrame:
    """Distinct rows of every hidden layer of every final checkpoint on the 450 test digits
    (450: the layer keeps every input apart, so its true I(X;T) is ln 450)."""
    import ibtools

    rows = []
    for history in sorted((run / "checkpoints").glob("*/seed*/history.json")):
        if tags is not None and history.parent.parent.name not in tags:
            continue  # a variant the run's summary does not include
        last = max(history.parent.glob("step_*.pt"))
        model, _ = ibtools.load_model(str(last))
        layers = [f"layers.{i}" for i in range(len(model.layers))]
        acts = ibtools.capture_activations(model, "digits", layers=layers)
        tag, seed = history.parent.parent.name, history.parent.name
        for layer in layers:
            t = acts[layer].flatten(1)
            rows.append({"run": tag, "seed": seed, "layer": layer, "n_rows": len(t),
                         "distinct": len(t.unique(dim=0))})
    return pd.DataFrame(rows)


def t_distinct(path: Path) -> str:
    """How many (net, layer) pairs keep all test inputs distinct."""
    df = pd.read_csv(path)
    rows = [[layer, str(len(g)), str(int((g["distinct"] == g["n_rows"]).sum())),
             str(int(g["distinct"].min()))] for layer, g in df.groupby("layer", sort=True)]
    return markdown(["layer", "nets", f"all {int(df['n_rows'].max())} rows distinct",
                     "fewest distinct rows"], rows)


#: the betas of the sweep (the study scripts' BETA_SWEEP)
BETAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

#: name -> (renderer, the CSV it reads relative to the data folder, the doc table it prints).
#: First-edition tables (3 seeds, the seed-range rule) keep their names and files.
TABLES = {
    "accuracy": (t_accuracy, "mlp_accuracy.csv", "Test accuracy (MLPs, first edition)"),
    "ib_layers3": (t_ib_layers3, "mlp_ib_layers3.csv",
                   "IB value of the last hidden layer (first edition)"),
    "verdicts": (t_counts, "mlp_verdict_counts_seed_ranges.csv",
                 "Where IBNorm is higher (first edition, seed ranges)"),
    "why": (t_why, "mlp_why_layers3.csv", "Why: the compression term (first edition)"),
    "lm_loss": (t_lm_loss, "lm_val_loss.csv", "LM validation loss (first edition)"),
    "lm_ib": (t_lm_ib, "lm_ib.csv", "LM IB values (first edition)"),
    "lm_verdicts": (t_counts, "lm_verdict_counts_seed_ranges.csv",
                    "LM verdict counts (first edition, seed ranges)"),
    "bijection": (t_bijection, "bijection_control.csv", "Bijection control (layers.3)"),
    "bijection_layers": (t_bijection_layers, "bijection_control.csv",
                         "Bijection control, every layer"),
    "lm_embedding_control": (t_counts, "lm_rerun/lm_embedding_control.csv",
                             "LM embedding-layer control (verdict counts)"),
    "verdicts_welch": (t_counts, "mlp_rerun/mlp_verdict_counts.csv",
                       "Verdict counts, Welch + Holm + minimum effect (MLP rerun, 5 settings)"),
    "lm_verdicts_welch": (t_counts, "lm_rerun/lm_verdict_counts.csv",
                          "Verdict counts, Welch + Holm + minimum effect (LMs)"),
    "lm_lambda": (t_lm_lambda, "lm_rerun/lm_comparison.csv", "LM verdicts per lambda"),
    "lm_loss_rerun": (t_lm_loss, "lm_rerun/lm_val_loss.csv", "LM validation loss (rerun)"),
    "lm_loss_v2": (t_lm_loss, "lm_v2/lm_val_loss.csv", "LM validation loss (10 seeds)"),
    "lm_lambda_v2": (t_lm_lambda, "lm_v2/lm_comparison.csv",
                     "LM verdicts per lambda (10 seeds, 8 settings)"),
    "lm_verdicts_v2": (t_counts, "lm_v2/lm_verdict_counts.csv",
                       "LM verdict counts per setting (10 seeds, Welch + Holm)"),
    "lm_embedding_control_v2": (t_counts, "lm_v2/lm_embedding_control.csv",
                                "LM embedding-layer control (10 seeds)"),
    "truth": (t_truth, f"{MLP_RUN}/digits_test_classes.csv", "The true IB value of every network"),
    "v2_accuracy": (t_accuracy, f"{MLP_RUN}/mlp_accuracy.csv", "Test accuracy (MLPs)"),
    "v2_ib_layers3": (t_ib_layers3, f"{MLP_RUN}/mlp_ib_layers3.csv",
                      "IB value of the last hidden layer"),
    "v2_why": (t_terms, f"{MLP_RUN}/mlp_why_layers3.csv",
               "I(T;Y) / I(T_prev;T) at the last hidden layer"),
    "v2_verdicts": (t_counts, f"{MLP_RUN}/mlp_verdict_counts.csv",
                    "Verdict counts, IBNorm vs LayerNorm (Welch + Holm + minimum effect)"),
    "v2_verdicts_batch": (t_counts, f"{MLP_RUN}/mlp_verdict_counts_batch.csv",
                          "Verdict counts, IBNorm vs BatchNorm"),
    "v2_diff_T": (t_diff_by_lambda, f"{MLP_RUN}/mlp_comparison.csv",
                  "IBNorm-T minus LayerNorm by layer, setting and lambda"),
    "v2_beta_sign": (t_beta_sign, f"{MLP_RUN}/mlp_beta_sweep.csv",
                     "Sign of the IBNorm-T minus LayerNorm difference across beta (layers.3)"),
    "v2_beta_counts": (t_beta_counts, f"{MLP_RUN}/mlp_beta_sweep.csv",
                       "All cells across beta"),
    "v2_robust": (t_robust, f"{MLP_RUN}/mlp_robustness.csv",
                  "Pairs with one sign under every setting"),
    "bijection_share": (t_bijection_share, "bijection_control.csv",
                        "How much of the trained difference the swap reproduces (layers.3)"),
    "distinct": (t_distinct, f"{MLP_RUN}/mlp_distinct_rows.csv",
                 "Trained nets whose layers keep the test digits apart"),
    "v2sl_verdicts": (t_counts, f"{MLP_RUN}_sl/mlp_verdict_counts.csv",
                      "Verdict counts, IBNorm-S and -L vs LayerNorm"),
    "v2sl_distinct": (t_distinct, f"{MLP_RUN}_sl/mlp_distinct_rows.csv",
                      "IBNorm-S/-L run: nets whose layers keep the test digits apart"),
    "isa": (t_isa, f"{MLP_RUN}/accuracy_isa.csv",
            "Test accuracy per CPU instruction set (same code and seeds)"),
    "runtime": (t_runtime, f"{MLP_RUN}/runtime.csv", "Run time of the study scripts"),
}


# -- noisy networks (examples/ibnorm_noisy.py --data-dir docs/data) -------------------------

NOISY_QUANTITIES = {"i_xt": "I(X;T)", "i_ty": "I(T;Y)", "i_prev_t": "I(T_prev;T)",
                    "ib_value": "IB value"}


def t_noisy_accuracy(path: Path) -> str:
    """Final and accuracy-matched test accuracy per sigma and variant (the matching rule)."""
    df = pd.read_csv(path)
    rows = [[f"{r['sigma']:g}", variant_label(r["norm"], r["lam"]),
             pm(r["final_accuracy_mean"], r["final_accuracy_sd"]), f"{r['target_accuracy']:.3f}",
             str(int(r["matched_step"])), pm(r["matched_accuracy_mean"], r["matched_accuracy_sd"]),
             "yes" if r["matched"] else "no"] for r in df.to_dict("records")]
    return markdown(["σ", "variant", "final accuracy", "target", "matched step",
                     "accuracy there", "within tolerance"], rows)


def t_noisy_terms(path: Path) -> str:
    """Per sigma, layer and variant at the final checkpoints: mean ± sd over seeds of each
    term, and the Monte Carlo standard error of the IB value's seed mean."""
    df = pd.read_csv(path)
    df = df[df["checkpoint"] == "final"]
    rows = [[f"{r['sigma']:g}", r["layer"], variant_label(r["norm"], r["lam"])]
            + [pm(r[f"{q}_mean"], r[f"{q}_sd"]) for q in NOISY_QUANTITIES]
            + [f"{r['ib_value_mc_se']:.4f}"] for r in df.to_dict("records")]
    return markdown(["σ", "layer", "variant", *NOISY_QUANTITIES.values(), "MC se (IB)"], rows)


def t_noisy_diffs(path: Path) -> str:
    """IBNorm-T minus LayerNorm per quantity, with the verdict (Welch, Holm over every cell
    of both comparisons, minimum effect 0.01 nat)."""
    df = pd.read_csv(path)
    rows = []
    for (kind, sigma, norm, lam, layer), g in df.groupby(
            ["comparison", "sigma", "norm", "lam", "layer"], sort=False):
        by = {r["quantity"]: r for r in g.to_dict("records")}
        first = next(iter(by.values()))
        rows.append([kind, f"{sigma:g}", variant_label(norm, lam), layer,
                     f"{int(first['step'])} / {int(first['baseline_step'])}"]
                    + [f"{by[q]['diff']:+.3f} ({by[q]['verdict']})" if q in by else ""
                       for q in NOISY_QUANTITIES])
    return markdown(["comparison", "σ", "variant", "layer", "steps (IB / LN)",
                     *NOISY_QUANTITIES.values()], rows)


def t_noisy_verdicts(path: Path) -> str:
    """How many (sigma, variant, layer) cells get each verdict, per comparison and quantity."""
    df = pd.read_csv(path)
    verdicts = [v for v in ("higher", "lower", "no difference", "below effect size",
                            "not matched", "not computed") if v in set(df["verdict"])]
    rows = []
    for (kind, q), g in df.groupby(["comparison", "quantity"], sort=False):
        counts = g["verdict"].value_counts()
        rows.append([kind, NOISY_QUANTITIES.get(q, q)]
                    + [str(int(counts.get(v, 0))) for v in verdicts] + [str(len(g))])
    return markdown(["comparison", "quantity", *verdicts, "cells"], rows)


def t_noisy_paths(path: Path) -> str:
    """The noise-path bias check: LayerNorm's I(X;T) and the IBNorm-T minus LayerNorm
    differences of I(X;T) and of the IB value at each number of paths K (seed means)."""
    df = pd.read_csv(path)
    ks = sorted(df["n_paths"].unique())
    base = {(r["n_paths"], r["sigma"], r["layer"]): r for r in
            df[df["norm"] == "layer"].to_dict("records")}
    rows = []
    for (sigma, norm, lam, layer), g in df[df["norm"] != "layer"].groupby(
            ["sigma", "norm", "lam", "layer"], sort=False):
        by = {r["n_paths"]: r for r in g.to_dict("records")}
        row = [f"{sigma:g}", variant_label(norm, lam), layer]
        for k in ks:
            r, b = by.get(k), base.get((k, sigma, layer))
            row += ["" if b is None else f"{b['i_xt_mean']:.3f}",
                    "" if r is None else f"{r['d_i_xt']:+.3f}",
                    "" if r is None else f"{r['d_ib_value']:+.3f}"]
        rows.append(row)
    header = ["σ", "variant", "layer"] + [h for k in ks for h in (
        f"LN I(X;T), K={k}", f"Δ I(X;T), K={k}", f"Δ IB, K={k}")]
    return markdown(header, rows)


def t_noisy_beta_counts(path: Path) -> str:
    """The noisy IB value across beta: per kind (layer-wise I(T;Y) - beta I(T_prev;T), or
    classic I(T;Y) - beta I(X;T)), comparison and beta, the signs of the mean differences and
    the verdicts (one Holm family per kind and beta)."""
    df = pd.read_csv(path)
    verdicts = ["higher", "lower", "no difference", "below effect size", "not matched"]
    rows = []
    for (kind, comparison), part in df.groupby(["ib_kind", "comparison"], sort=False):
        rows += _noisy_beta_rows(kind, comparison, part, verdicts)
    return markdown(["IB value", "comparison", "β", "diff > 0", "diff < 0", *verdicts, "cells"],
                    rows)


def _noisy_beta_rows(kind: str, comparison: str, part: pd.DataFrame, verdicts: list) -> list:
    rows = []
    for beta, g in part.groupby("beta", sort=True):
        tested = g[g["verdict"] != "not matched"]
        v = g["verdict"].value_counts()
        rows.append([kind, comparison, f"{beta:g}", str(int((tested["diff"] > 0).sum())),
                     str(int((tested["diff"] < 0).sum()))]
                    + [str(int(v.get(k, 0))) for k in verdicts] + [str(len(g))])
    return rows


def t_noisy_beta_cells(path: Path, kind: str = "layerwise",
                       comparison: str = "matched noise") -> str:
    """The layer-wise noisy IB value's difference at matched noise per (sigma, variant,
    layer) and beta, with the verdict of that beta's family (H, L, n, e)."""
    df = pd.read_csv(path)
    df = df[(df["ib_kind"] == kind) & (df["comparison"] == comparison)]
    return grid(df, ["sigma", "norm", "lam", "layer"], "beta",
                lambda r: f"{r['diff']:+.3f} {_mark(r['verdict'])}",
                lambda sigma, norm, lam, layer: f"σ={sigma:g}, {variant_label(norm, lam)}, {layer}",
                "σ, variant, layer", lambda beta: f"β={beta:g}")


TABLES.update({
    "noisy_paths": (t_noisy_paths, "noisy_paths_check.csv",
                    "Noisy networks: noise paths per input K, levels and differences"),
    "noisy_accuracy": (t_noisy_accuracy, "noisy_accuracy.csv",
                       "Noisy networks: accuracy and the matching rule"),
    "noisy_terms": (t_noisy_terms, "noisy_summary.csv",
                    "Noisy networks: the IB value's terms at matched noise"),
    "noisy_diffs": (t_noisy_diffs, "noisy_comparison.csv",
                    "Noisy networks: IBNorm-T minus LayerNorm, matched noise and accuracy"),
    "noisy_verdicts": (t_noisy_verdicts, "noisy_comparison.csv",
                       "Noisy networks: verdict counts"),
    "noisy_beta": (t_noisy_beta_counts, "noisy_beta_sweep.csv",
                   "Noisy networks: the IB value across beta, counts"),
    "noisy_beta_cells": (t_noisy_beta_cells, "noisy_beta_sweep.csv",
                         "Noisy networks: the layer-wise IB value across beta, matched noise"),
})


# -- larger models (examples/ibnorm_gpu_study.py --data-dir docs/data --data-name NAME) ----

MODE_ORDER = {"deterministic": 0}
#: Mode families after the deterministic one: trained noise, absolute and relative channels.
MODE_FAMILIES = {"noisy": 1, "channel": 2, "relchannel": 3}


def _mode_key(mode: str) -> tuple:
    """deterministic first, then each noisy family by sigma."""
    if "-" not in mode:
        return (MODE_ORDER.get(mode, 9), 0.0)
    family, value = mode.split("-", 1)
    return (MODE_FAMILIES.get(family, 9), float(value))


def _modes(df: pd.DataFrame, channel: bool, column: str = "mode") -> pd.DataFrame:
    """The rows of the channel modes (``channel-<S>``, ``relchannel-<S>``) or of every
    other mode."""
    return df[df[column].astype(str).str.contains("channel-") == channel]


def t_large_metrics(path: Path) -> str:
    """Per mode and variant: the task metric (validation loss in nats per byte for the LM,
    test accuracy for the ViT) as mean ± sd over seeds, and the seeds."""
    df = _modes(pd.read_csv(path), channel=False)  # a channel reads the deterministic nets
    rows = []
    for model, part in df.groupby("model", sort=False):
        metric = next(m for m in ("val_loss", "test_accuracy")
                      if m in part and part[m].notna().any())
        for mode in sorted(part["mode"].unique(), key=_mode_key):
            for (norm, lam), g in part[part["mode"] == mode].groupby(["norm", "lam"], sort=False):
                rows.append([MODEL_LABELS.get(model, model), mode, variant_label(norm, lam),
                             metric.replace("_", " "), pm(g[metric].mean(), g[metric].std(ddof=1)),
                             str(len(g)), str(int(g["step"].iloc[0]))])
    return markdown(["model", "mode", "variant", "metric", "mean ± sd", "seeds", "steps"], rows)


def t_large_diffs(path: Path, channel: bool = False) -> str:
    """IBNorm-T minus LayerNorm per mode, variant, layer and setting: the IB value's
    difference with its verdict (Welch, Holm over all cells, 0.01-nat minimum effect), the
    terms' mean differences, and the share of rows at the ln n ceiling (both variants)."""
    comparison = _modes(pd.read_csv(path), channel)
    summary = pd.read_csv(path.with_name(path.name.replace("_comparison", "_summary")))
    ceiling = pd.read_csv(path.with_name(path.name.replace("_comparison", "_ceiling")))
    means = summary.set_index(["model", "mode", "norm", "lam", "layer", "setting"])
    at_ceiling = ceiling.set_index(["model", "study_mode", "setting", "layer"])["at_ceiling"]
    rows = []
    comparison = comparison.assign(_mode=comparison["mode"].map(_mode_key))
    for r in comparison.sort_values(["model", "_mode", "lam", "layer_index"],
                                    kind="mergesort").to_dict("records"):
        key = (r["model"], r["mode"], r["norm"], r["lam"], r["layer"], r["setting"])
        base = means.loc[(r["model"], r["mode"], "layer", 0.0, r["layer"], r["setting"])]
        mine = means.loc[key]
        rows.append([MODEL_LABELS.get(r["model"], r["model"]), r["mode"],
                     variant_label(r["norm"], r["lam"]), r["layer"],
                     setting_label(r["setting"]), f"{r['diff']:+.3f} {_mark(r['verdict'])}",
                     f"{mine['i_xt_mean'] - base['i_xt_mean']:+.3f}",
                     f"{mine['i_ty_mean'] - base['i_ty_mean']:+.3f}",
                     f"{at_ceiling.get((r['model'], r['mode'], r['setting'], r['layer']), float('nan')):.2f}"])
    return markdown(["model", "mode", "variant", "layer", "setting", "Δ IB value", "Δ I(X;T)",
                     "Δ I(T;Y)", "at ceiling"], rows)


def t_large_levels(path: Path, channel: bool = False) -> str:
    """LayerNorm's own levels per mode, layer and setting (mean over seeds): the scale the
    differences of ``*_diffs`` are read against."""
    df = _modes(pd.read_csv(path), channel)
    df = df[df["norm"] == "layer"].assign(_mode=df["mode"].map(_mode_key))
    rows = [[MODEL_LABELS.get(r["model"], r["model"]), r["mode"], r["layer"],
             setting_label(r["setting"]), pm(r["i_xt_mean"], r["i_xt_sd"]),
             pm(r["i_ty_mean"], r["i_ty_sd"]), pm(r["ib_value_mean"], r["ib_value_sd"])]
            for r in df.sort_values(["model", "_mode", "layer_index"],
                                    kind="mergesort").to_dict("records")]
    return markdown(["model", "mode", "layer", "setting", "I(X;T)", "I(T;Y)", "IB value"], rows)


def t_large_scale(path: Path) -> str:
    """Per mode, variant and layer (means over seeds): the block output's per-coordinate sd
    and the median distance from a measured row to its nearest other row, with their
    ranges over seeds (channel modes left out: they read the deterministic networks)."""
    # a channel mode reads the deterministic networks: their rows would repeat those
    df = _modes(pd.read_csv(path), channel=False)
    df = df.assign(_mode=df["mode"].map(_mode_key))
    rows = []
    for (model, _, mode, lam, norm, layer), g in df.groupby(
            ["model", "_mode", "mode", "lam", "norm", "layer"], sort=True):
        rows.append([MODEL_LABELS.get(model, model), mode, variant_label(norm, lam), layer,
                     f"{g['coord_sd'].mean():.2f} ({g['coord_sd'].min():.2f}-{g['coord_sd'].max():.2f})",
                     f"{g['nn_distance_median'].mean():.1f} ({g['nn_distance_median'].min():.1f}-"
                     f"{g['nn_distance_median'].max():.1f})", str(int(g["dim"].iloc[0]))])
    return markdown(["model", "mode", "variant", "layer", "coordinate sd (seed range)",
                     "nearest-neighbour distance (seed range)", "dimensions"], rows)


for _name, _label in (("cpu_vit", "ViT on digits, CPU run of the larger-model study"),
                      ("cpu_vit_channel", "ViT on digits read through a channel, CPU run"),
                      ("cpu_gpt", "6-block GPT, CPU run of the larger-model study"),
                      ("gpu", "Larger models on a GPU")):
    if not _name.endswith("_channel"):
        TABLES.update({
            f"{_name}_metrics": (t_large_metrics, f"{_name}_metrics.csv",
                                 f"{_label}: task metric"),
            f"{_name}_levels": (t_large_levels, f"{_name}_summary.csv",
                                f"{_label}: LayerNorm's levels"),
            f"{_name}_diffs": (t_large_diffs, f"{_name}_comparison.csv",
                               f"{_label}: IBNorm-T minus LayerNorm"),
            f"{_name}_scale": (t_large_scale, f"{_name}_scale.csv",
                               f"{_label}: the block outputs' scale"),
        })
    # the channel modes (the deterministic nets read through an analysis-time channel)
    _channel = _name if _name.endswith("_channel") else f"{_name}_channel"
    TABLES.update({
        f"{_channel}_levels": (functools.partial(t_large_levels, channel=True),
                               f"{_name}_summary.csv", f"{_label}: LayerNorm's levels, channel"),
        f"{_channel}_diffs": (functools.partial(t_large_diffs, channel=True),
                              f"{_name}_comparison.csv",
                              f"{_label}: IBNorm-T minus LayerNorm, channel"),
    })


def _class_counts(data_dir: Path) -> Path:
    """The 450 test digits' class counts (the labels every MLP table is measured on)."""
    from ibtools.probes.datasets import digits_split

    _, y = digits_split("test")
    counts = np.bincount(y)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _study_common import write_csv

    return write_csv(pd.DataFrame({"class": range(len(counts)), "count": counts}),
                     data_dir / "digits_test_classes.csv")


def from_run(run: Path, data_dir: Path) -> list[Path]:
    """Convert a study run's summary.csv/comparison.csv into the CSVs the tables read."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _study_common import verdict_counts, write_csv

    data_dir.mkdir(parents=True, exist_ok=True)
    summary = pd.read_csv(run / "summary.csv")
    # baselines first, then IBNorm by flavour and lambda, as the doc's tables list them
    summary = summary.assign(_ib=summary["norm"].astype(str).str.startswith("ib-")).sort_values(
        ["_ib", "model", "norm", "lam"], kind="mergesort").drop(columns="_ib")
    written = []
    lm = "val_loss_mean" in summary.columns
    last = summary[summary["layer_index"] == summary["layer_index"].max()]
    if lm:
        first_setting = summary[summary["setting"] == summary["setting"].iloc[0]]
        loss = first_setting.drop_duplicates(["model", "norm", "lam"])
        written.append(write_csv(loss[["model", "norm", "lam", "n_seeds", "val_loss_mean",
                                       "val_loss_sd"]], data_dir / "lm_val_loss.csv"))
        cols = ["model", "norm", "lam", "layer", "setting", "n_seeds", "ib_value_mean", "ib_value_sd"]
        written.append(write_csv(summary[cols], data_dir / "lm_ib.csv"))
    else:
        acc = last[last["setting"] == last["setting"].iloc[0]]
        written.append(write_csv(acc[["model", "norm", "lam", "n_seeds", "test_accuracy_mean",
                                      "test_accuracy_sd"]], data_dir / "mlp_accuracy.csv"))
        written.append(write_csv(last[["model", "norm", "lam", "layer", "setting", "n_seeds",
                                       "ib_value_mean", "ib_value_sd"]],
                                 data_dir / "mlp_ib_layers3.csv"))
        written.append(write_csv(last[["model", "norm", "lam", "layer", "setting", "n_seeds",
                                       "i_ty_mean", "i_prev_t_mean"]], data_dir / "mlp_why_layers3.csv"))
        written.append(_class_counts(data_dir))
        if (run / "checkpoints").is_dir():
            tags = {f"{m}_{n}_lam{float(lam):g}" for m, n, lam in
                    zip(summary["model"], summary["norm"], summary["lam"])}
            written.append(write_csv(_distinct_rows(run, tags), data_dir / "mlp_distinct_rows.csv"))
    keep = ["model", "baseline", "norm", "lam", "layer", "layer_index", "setting", "n_ib",
            "n_baseline", "ib_mean", "baseline_mean", "diff", "cohens_d", "p", "p_adj", "verdict"]
    prefix = "lm" if lm else "mlp"
    for source, name, columns in (("comparison.csv", "comparison", keep),
                                  ("beta_sweep.csv", "beta_sweep",
                                   ["norm", "lam", "layer", "layer_index", "setting", "beta",
                                    "diff", "p_adj", "verdict"]),
                                  ("robustness.csv", "robustness", None)):
        if (run / source).exists():
            df = pd.read_csv(run / source)
            df = df[[c for c in columns if c in df.columns]] if columns else df
            written.append(write_csv(df, data_dir / f"{prefix}_{name}.csv"))
    for other in sorted(run.glob("comparison_*.csv")):
        norm = other.stem.split("_", 1)[1]
        written.append(write_csv(verdict_counts(pd.read_csv(other)),
                                 data_dir / f"{prefix}_verdict_counts_{norm}.csv"))
    control = run / "embedding_control.csv"
    if control.exists():
        counts = verdict_counts(pd.read_csv(control))
        written.append(write_csv(counts, data_dir / "lm_embedding_control.csv"))
    comparison = run / "comparison.csv"
    if comparison.exists():
        counts = verdict_counts(pd.read_csv(comparison))
        name = "lm_verdict_counts.csv" if lm else "mlp_verdict_counts.csv"
        written.append(write_csv(counts, data_dir / name))
    return written


def render(data_dir: Path, names=None) -> dict:
    """``{name: markdown}`` for the named tables (default: every table whose CSV exists)."""
    out = {}
    for name in names or TABLES:
        make, csv, _ = TABLES[name]
        if names or (data_dir / csv).exists():
            out[name] = make(data_dir / csv)
    return out


def render_files(paths) -> dict:
    """``{(table name, path): markdown}``: each written CSV printed once, by the first
    table reading a file of that name (what ``--from-run`` shows of its conversion)."""
    out = {}
    for path in paths:
        # the second edition's tables are listed last: they name a rerun's files best
        for name, (make, csv, _) in reversed(TABLES.items()):
            if Path(csv).name == path.name:
                try:
                    out[(name, path)] = make(path)
                except (KeyError, FileNotFoundError):  # a table needing a file not converted
                    continue
                break
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DATA_DIR), help="folder of the study's CSVs")
    parser.add_argument("--table", action="append", choices=sorted(TABLES),
                        help="print only this table (repeatable; default all)")
    parser.add_argument("--from-run", default=None,
                        help="first convert a study run folder's summary/comparison CSVs")
    parser.add_argument("--list", action="store_true", help="name the tables and their CSVs")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir)
    if args.list:
        for name, (_, csv, title) in TABLES.items():
            print(f"{name}: {title} <- {csv}")
        return 0
    if args.from_run:
        run = Path(args.from_run)
        if not (run / "summary.csv").exists():
            parser.error(f"--from-run {run}: no summary.csv there (run a study script first)")
        written = from_run(run, data_dir)
        for path in written:
            print(f"[study_tables] wrote {path}", file=sys.stderr)
        for (name, path), text in render_files(written).items():
            print(f"### {TABLES[name][2]}  ({path})\n\n{text}\n")
        return 0
    if not data_dir.is_dir():
        parser.error(f"--data-dir {data_dir} is not a folder")
    missing = [TABLES[n][1] for n in args.table or [] if not (data_dir / TABLES[n][1]).exists()]
    if missing:
        parser.error(f"--data-dir {data_dir} lacks {', '.join(missing)}")
    for name, text in render(data_dir, args.table).items():
        print(f"### {TABLES[name][2]}  ({TABLES[name][1]})\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
