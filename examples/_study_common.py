"""Shared steps of the IBNorm study scripts: training runs, seed summaries, figures, report.

The two scripts (``ibnorm_mlp_digits.py``, ``ibnorm_tiny_lm.py``) differ in models, data and
estimator settings; everything after "a results table exists" is the same and lives here.
Only the public ibtools API is used: ``ibtools.models.train``, ``ibtools.analyze`` and
``ibtools.reports``.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ibtools.results import write_atomic

from _study_runs import say, usable_cores

#: Columns of summary.csv that name one group of seeds.
GROUP_KEYS = ["model", "norm", "lam", "variant", "layer", "layer_index", "setting"]
#: Layers no normalization touches (the language models' token embeddings): for an
#: injective embedding I(T;Y) = I(byte; next byte) in every variant, so any verdict there is
#: the estimator's and the rule's false positive -- a free negative control.
EMBEDDING_LAYERS = ("wte", "embed")
#: Quantities summarized over seeds (mean, sd, min, max).
QUANTITIES = ["ib_value", "i_ty", "i_prev_t", "i_xt"]
#: Betas of the sweep: the IB value I(T;Y) - beta * I(T_prev;T) is recomputed from the two
#: recorded terms at each (no estimator reruns), and every beta is compared as its own family.
BETA_SWEEP = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class Variant:
    """One model variant of the study: a reference model, its norm and lambda."""

    model: str
    norm: str
    lam: float

    @property
    def tag(self) -> str:
        return f"{self.model}_{self.norm}_lam{self.lam:g}"

    @property
    def is_baseline(self) -> bool:
        return not self.norm.startswith("ib-")


def study_arguments(description: str, default_out: str, default_seeds: int,
                    extra=()) -> argparse.Namespace:
    """The command line both scripts share; ``extra`` adds ``(flag, add_argument kwargs)``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=default_out,
                        help=f"run folder (default {default_out}); a rerun resumes there")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-test size (fewer variants, short training, < 1 min)")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"model seeds per variant (default {default_seeds}; quick: 2)")
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'auto'")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: these models and n are small, "
                             "and more threads only add synchronisation, badly so on a busy "
                             "machine)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="training runs trained and analyzed at once, each in its own "
                             "process on --threads threads (default: the usable cores on a "
                             "CPU; 1 with --quick or another --device, which runs everything "
                             "in this process). The tables do not depend on it")
    parser.add_argument("--final-only", action="store_true",
                        help="analyze only each run's last checkpoint, with every setting "
                             "(the comparisons; no information-plane trajectories)")
    parser.add_argument("--no-report", action="store_true",
                        help="skip report.html/report.pdf (tables, figures and study.md are "
                             "still written)")
    for flag, kwargs in extra:
        parser.add_argument(flag, **kwargs)
    args = parser.parse_args()
    if args.seeds is None:
        args.seeds = 2 if args.quick else default_seeds
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.jobs is None:  # the quick size is over before worker processes pay for themselves;
        # on a GPU one process keeps the device busy (several would each hold a CUDA context)
        args.jobs = 1 if args.quick or args.device != "cpu" else usable_cores()
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    import torch

    torch.set_num_threads(args.threads)
    return args


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    """Write a table as CSV atomically (an interrupted study never leaves half a file)."""
    return write_atomic(path, df.to_csv(index=False))


def last_step(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of each run's final checkpoint (largest step per model, norm, lam, seed)."""
    keys = ["model", "norm", "lam", "seed"]
    latest = table.groupby(keys, dropna=False)["step"].transform("max")
    return table[table["step"] == latest]


def _variant_labels(table: pd.DataFrame) -> list[str]:
    with_model = table["model"].nunique() > 1
    out = []
    for m, n, lam in zip(table["model"], table["norm"], table["lam"]):
        label = f"{n}, λ={float(lam):g}"
        out.append(f"{m} {label}" if with_model else label)
    return out


def seed_summary(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean, sd, min and max over model seeds of every quantity at the final checkpoint.

    Parameters
    ----------
    table : pandas.DataFrame
        The results table of ``ibtools.analyze`` (one beta).
    metric : str
        The model metric to carry beside the information (``test_accuracy``, ``val_loss``).

    Returns
    -------
    pandas.DataFrame
        One row per (model, norm, lam, layer, estimator setting): ``n_seeds`` and
        ``<quantity>_{mean,sd,min,max}`` for the IB value, I(T;Y), I(T_prev;T), I(X;T) and
        the metric.  sd is the sample standard deviation (ddof 1; NaN with one seed).
    """
    final = last_step(table).copy()
    final["variant"] = _variant_labels(final)
    columns = QUANTITIES + [metric]
    grouped = final.groupby(GROUP_KEYS, sort=False, dropna=False)
    parts = {"n_seeds": grouped["seed"].nunique()}
    for column in columns:
        values = grouped[column]
        parts[f"{column}_mean"] = values.mean()
        parts[f"{column}_sd"] = values.std(ddof=1)
        parts[f"{column}_min"] = values.min()
        parts[f"{column}_max"] = values.max()
    summary = pd.DataFrame(parts).reset_index()
    return summary.sort_values(["setting", "layer_index", "model", "norm", "lam"]).reset_index(drop=True)


def compare_to_baselines(table: pd.DataFrame, baselines: dict, *, value: str = "ib_value",
                         min_effect: float | None = None, correction: str = "holm") -> pd.DataFrame:
    """IBNorm against its baseline norm, per layer and estimator setting, over model seeds.

    Every cell (IBNorm variant, layer, setting) is judged by :mod:`ibtools.compare`: a
    Welch t-test of the IBNorm seeds against the baseline seeds, Holm-corrected over *all*
    cells of the study (every model, variant, layer and setting form one family), and a
    minimum effect of :data:`ibtools.compare.MIN_EFFECT_NATS`.

    Parameters
    ----------
    table : pandas.DataFrame
        The results table (one beta); its final checkpoints are compared.
    baselines : dict
        ``{model: baseline norm}``, e.g. ``{"mlp": "layer"}``.
    value : str
        Quantity compared (default the IB value).
    min_effect : float, optional
        Smallest difference that can be a finding (default ``MIN_EFFECT_NATS``).
    correction : {"holm", "bh", "none"}
        Multiplicity correction over all cells.

    Returns
    -------
    pandas.DataFrame
        One row per (model, IBNorm variant, layer, setting): ``ib_mean``, ``ib_sd``,
        ``baseline_mean``, ``baseline_sd``, ``diff = ib_mean - baseline_mean``, ``n_ib``,
        ``n_baseline``, ``cohens_d``, ``t``, ``df``, ``p``, ``p_adj`` and ``verdict`` (one of
        :data:`ibtools.compare.VERDICTS`; "not computed" with fewer than two seeds or an
        estimator that refused).
    """
    from ibtools import compare

    final = last_step(table)
    cell_keys = ["layer", "layer_index", "setting"]
    cells = []
    for model, base_norm in baselines.items():
        mine = final[final["model"] == model]
        base = {k: g[value].to_numpy() for k, g in
                mine[mine["norm"] == base_norm].groupby(cell_keys, sort=False)}
        for (norm, lam, *key), g in mine[mine["norm"].str.startswith("ib-")].groupby(
                ["norm", "lam", *cell_keys], sort=False):
            if tuple(key) in base:
                cells.append(({"model": model, "baseline": base_norm, "norm": norm, "lam": lam,
                               **dict(zip(cell_keys, key))}, g[value].to_numpy(), base[tuple(key)]))
    kwargs = {} if min_effect is None else {"min_effect": min_effect}
    out = compare.compare_cells(cells, correction=correction, **kwargs)
    return out.rename(columns={"mean_a": "ib_mean", "sd_a": "ib_sd", "mean_b": "baseline_mean",
                               "sd_b": "baseline_sd", "n_a": "n_ib", "n_b": "n_baseline"})


def beta_sweep(table: pd.DataFrame, baselines: dict, betas=BETA_SWEEP) -> pd.DataFrame:
    """IBNorm against its baseline at every beta of ``betas``.

    The layer-wise IB value at beta is ``i_ty - beta * i_prev_t`` of each recorded row, so
    the sweep needs no new estimates.  Each beta is one family for the Holm correction (the
    cells of one beta are the comparison a study at that beta would make).

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`compare_to_baselines` and ``beta``, one row per (beta, cell).
    """
    parts = []
    for beta in betas:
        beta = float(beta)
        if not beta >= 0:
            raise ValueError(f"betas: every beta must be >= 0, got {beta!r}")
        at_beta = table.assign(ib_value=table["i_ty"] - beta * table["i_prev_t"])
        part = compare_to_baselines(at_beta, baselines)
        parts.append(part.assign(beta=beta))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def verdict_counts(comparison: pd.DataFrame) -> pd.DataFrame:
    """How many (IBNorm variant, layer) cells get each verdict, per model and setting."""
    from ibtools import compare

    if comparison.empty:
        return pd.DataFrame(columns=["model", "setting", *compare.VERDICTS, "cells"])
    return compare.summarize(comparison, by=["model", "setting"])


def survives_all_settings(comparison: pd.DataFrame) -> pd.DataFrame:
    """Per (model, IBNorm variant, layer): the verdict under every setting, and whether one
    verdict holds under all of them (``"higher everywhere"``, ``"lower everywhere"``,
    ``"mixed"``)."""
    rows = []
    for key, group in comparison.groupby(["model", "norm", "lam", "layer", "layer_index"], sort=False):
        group = group[group["verdict"] != "not computed"]
        verdicts = set(group["verdict"])
        signs = set(np.sign(group["diff"].to_numpy()).astype(int).tolist())
        if verdicts == {"higher"}:
            overall = "higher everywhere"
        elif verdicts == {"lower"}:
            overall = "lower everywhere"
        elif signs == {1}:
            overall = "mean higher everywhere, not a finding everywhere"
        elif signs == {-1}:
            overall = "mean lower everywhere, not a finding everywhere"
        else:
            overall = "mixed"
        rows.append(dict(zip(["model", "norm", "lam", "layer", "layer_index"], key),
                         n_settings=len(group), n_higher=int((group["verdict"] == "higher").sum()),
                         n_lower=int((group["verdict"] == "lower").sum()), overall=overall))
    return pd.DataFrame(rows)


def _sweep_counts(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per beta: cells whose mean difference is positive / negative, and verdict counts."""
    from ibtools import compare

    counts = compare.summarize(sweep, by=["beta"])
    signs = sweep.groupby("beta")["diff"].agg(positive=lambda d: int((d > 0).sum()),
                                                negative=lambda d: int((d < 0).sum()))
    return signs.reset_index().merge(counts, on="beta")


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A pipe table without the optional ``tabulate`` dependency."""
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule] + body)


def save_figures(table: pd.DataFrame, out: Path, plane_setting: int, plane_variants,
                 log=say) -> list:
    """PNG figures from the ibtools.reports plot functions; returns the paths written.

    ``plane_setting`` is the position, in the table's order, of the estimator setting the
    information plane shows (one setting keeps the figure readable); ``plane_variants``
    restricts its panels (``None``: all variants).
    """
    from ibtools.reports import (plot_estimator_agreement, plot_ib_across_lam,
                                 plot_ib_across_layers, plot_information_plane)

    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    jobs = {
        "information_plane.png": lambda: plot_information_plane(
            table, settings=list(table["setting"].unique())[plane_setting],
            variants=plane_variants),
        "ib_across_layers.png": lambda: plot_ib_across_layers(table),
        "ib_across_lam.png": lambda: plot_ib_across_lam(table),
        "estimator_agreement.png": lambda: plot_estimator_agreement(table),
    }
    written = []
    for name, make in jobs.items():
        try:
            fig = make()
        except (ValueError, KeyError, IndexError) as exc:
            # A figure that does not apply to this table (one lam only) is skipped, not fatal.
            log(f"[figures] {name} skipped: {exc}")
            continue
        fig.savefig(figures / name, dpi=80)
        written.append(figures / name)
    return written


def write_outputs(table: pd.DataFrame, out: Path, *, title: str, metric: str, baselines: dict,
                  plane_setting, plane_variants, notes: list[str], report: bool, log=say,
                  other_baselines: dict | None = None) -> dict:
    """summary.csv, comparison.csv, robustness.csv, beta_sweep.csv, figures, study.md and the
    HTML/PDF report.

    ``other_baselines`` (e.g. ``{"mlp": "batch"}``) adds ``comparison_<norm>.csv``: IBNorm
    against that norm as well, a family of its own for the correction.
    """
    # Checkpoints name their architecture "ibtools:<model>"; the study keys on the model.
    from ibtools import compare
    from ibtools.environment import describe_environment, environment_lines

    table = table.assign(model=table["model"].astype(str).str.split(":").str[-1])
    summary = seed_summary(table, metric)
    comparison = compare_to_baselines(table, baselines)
    robust = survives_all_settings(comparison) if not comparison.empty else pd.DataFrame()
    counts = verdict_counts(comparison)
    env = describe_environment(table["device"].iloc[0] if "device" in table else None)
    write_csv(summary, out / "summary.csv")
    write_csv(comparison, out / "comparison.csv")
    write_csv(robust, out / "robustness.csv")
    sweep = beta_sweep(table, baselines)
    write_csv(sweep, out / "beta_sweep.csv")
    extra = {}
    for model, norm in (other_baselines or {}).items():
        extra[norm] = compare_to_baselines(table, {model: norm})
        write_csv(extra[norm], out / f"comparison_{norm}.csv")
    control = (comparison[comparison["layer"].isin(EMBEDDING_LAYERS)] if not comparison.empty
               else comparison)
    if not control.empty:
        write_csv(control, out / "embedding_control.csv")
    write_atomic(out / "environment.json", json.dumps(env, indent=2) + "\n")
    figures = save_figures(table, out, plane_setting, plane_variants, log=log)

    show = summary[["variant", "layer", "setting", "n_seeds", "ib_value_mean", "ib_value_sd",
                    "i_ty_mean", "i_prev_t_mean", f"{metric}_mean", f"{metric}_sd"]]
    lines = [f"# {title}", "", *[part for note in notes for part in (note, "")],
             "All information in nats; IB value = I(T;Y) - beta * I(T_prev;T) (layer-wise, "
             f"beta = {table['beta'].iloc[0]:g}); mean and sd over model seeds at the final "
             "checkpoint.", "",
             "## Verdict counts (IBNorm vs baseline)", "",
             "Per cell (variant, layer, setting): Welch t-test over model seeds, Holm-corrected "
             f"over all {len(comparison)} cells, alpha {compare.ALPHA:g}; differences below "
             f"{compare.MIN_EFFECT_NATS:g} nats are 'below effect size' whatever the test says.",
             "",
             markdown_table(counts), "",
             *([] if control.empty else [
                 "## Embedding-layer control", "",
                 "No norm touches the embedding; for an injective embedding every variant has "
                 "the same true I(T;Y), so a verdict here is an artefact of the estimator and "
                 "the rule (embedding_control.csv).", "",
                 markdown_table(compare.summarize(control, by=["model", "setting"])), ""]),
             *[part for norm, comp in extra.items() for part in (
                 f"## Verdict counts (IBNorm vs {norm}, comparison_{norm}.csv)", "",
                 markdown_table(verdict_counts(comp)), "")],
             "## The beta sweep (beta_sweep.csv)", "",
             ("IB value recomputed from I(T;Y) and I(T_prev;T) at each beta; one Holm family "
              "per beta. Cells (of all IBNorm variants, layers and settings) with a positive "
              "and a negative mean difference, and the verdicts:"), "",
             markdown_table(_sweep_counts(sweep)) if not sweep.empty else "(no cells)", "",
             "## Does the verdict hold under every estimator setting?", "",
             markdown_table(robust) if not robust.empty else "(no IBNorm/baseline pairs)", "",
             "## Seed summary", "", markdown_table(show), "",
             "## Environment", "", *[f"- {line}" for line in environment_lines(env)], "",
             "## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in figures]
    write_atomic(out / "study.md", "\n".join(lines) + "\n")
    written = {"summary": out / "summary.csv", "comparison": out / "comparison.csv",
               "beta_sweep": out / "beta_sweep.csv",
               **{f"comparison_{norm}": out / f"comparison_{norm}.csv" for norm in extra},
               "environment": out / "environment.json",
               "robustness": out / "robustness.csv", "study": out / "study.md"}
    if report:
        from ibtools.reports import write_report

        written.update(write_report(out, title=title))
    return written
