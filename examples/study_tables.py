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
import math
import re
import sys
from pathlib import Path

import pandas as pd

DATA_DIR = Path(__file__).resolve().parents[1] / "docs" / "data"
NORM_LABELS = {"layer": "LayerNorm", "batch": "BatchNorm", "rms": "RMSNorm",
               "ib-S": "IBNorm-S", "ib-L": "IBNorm-L", "ib-T": "IBNorm-T"}
MODEL_LABELS = {"gpt": "GPT", "llama": "LLaMA", "mlp": "MLP"}


def setting_label(setting: str) -> str:
    """Short column label of an estimator setting: ``kde(noise_var=0.01)`` -> ``KDE 0.01``."""
    m = re.fullmatch(r"(\w+)\((.*)\)", str(setting))
    if not m:
        return str(setting)
    method, params = m.group(1), dict(p.split("=", 1) for p in m.group(2).split(",") if "=" in p)
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


def t_accuracy(d: Path) -> str:
    df = pd.read_csv(d / "mlp_accuracy.csv")
    df["column"] = ["baseline" if not str(n).startswith("ib-") else f"lambda {lam:g}"
                    for n, lam in zip(df["norm"], df["lam"])]
    return grid(df, ["norm"], "column", lambda r: pm(r["test_accuracy_mean"], r["test_accuracy_sd"]),
                lambda n: NORM_LABELS.get(n, n), "norm")


def _ib_grid(df: pd.DataFrame, row_keys, row_label, first) -> str:
    return grid(df, row_keys, "setting", lambda r: pm(r["ib_value_mean"], r["ib_value_sd"]),
                row_label, first, setting_label)


def t_ib_layers3(d: Path) -> str:
    return _ib_grid(pd.read_csv(d / "mlp_ib_layers3.csv"), ["norm", "lam"], variant_label,
                    "variant")


def _counts(df: pd.DataFrame) -> str:
    counts = [c for c in df.columns if c not in ("model", "setting")]
    with_model = df["model"].nunique() > 1
    header = (["model"] if with_model else []) + ["setting"] + counts
    rows = [([MODEL_LABELS.get(r["model"], r["model"])] if with_model else [])
            + [setting_label(r["setting"])] + [str(int(r[c])) for c in counts]
            for r in df.to_dict("records")]
    return markdown(header, rows)


def t_verdicts(d: Path) -> str:
    return _counts(pd.read_csv(d / "mlp_verdict_counts_seed_ranges.csv"))


def t_why(d: Path) -> str:
    df = pd.read_csv(d / "mlp_why_layers3.csv")
    rows = [[variant_label(r["norm"], r["lam"]), setting_label(r["setting"]),
             f"{r['i_ty_mean']:.3f}", f"{r['i_prev_t_mean']:.3f}"] for r in df.to_dict("records")]
    return markdown(["variant", "setting", "I(T;Y)", "I(T_prev;T)"], rows)


def t_lm_loss(d: Path) -> str:
    df = pd.read_csv(d / "lm_val_loss.csv")
    df["column"] = ["baseline" if not str(n).startswith("ib-") else variant_label(n, lam)
                    for n, lam in zip(df["norm"], df["lam"])]
    base = dict(zip(df.loc[df["column"] == "baseline", "model"],
                    df.loc[df["column"] == "baseline", "norm"]))
    return grid(df, ["model"], "column", lambda r: pm(r["val_loss_mean"], r["val_loss_sd"]),
                lambda m: f"{MODEL_LABELS.get(m, m)} ({NORM_LABELS.get(base.get(m), '?')})", "model")


def t_lm_ib(d: Path) -> str:
    return _ib_grid(pd.read_csv(d / "lm_ib.csv"), ["model", "layer", "norm", "lam"],
                    lambda m, layer, n, lam: f"{MODEL_LABELS.get(m, m)} `{layer}`, "
                                             f"{variant_label(n, lam)}", "layer, variant")


def t_lm_verdicts(d: Path) -> str:
    return _counts(pd.read_csv(d / "lm_verdict_counts_seed_ranges.csv"))


def t_verdicts_welch(d: Path) -> str:
    """Verdict counts under ibtools.compare's rule (Welch, Holm over every cell, minimum
    effect), written by ``--from-run``."""
    return _counts(pd.read_csv(d / "mlp_verdict_counts.csv"))


def t_lm_verdicts_welch(d: Path) -> str:
    return _counts(pd.read_csv(d / "lm_verdict_counts.csv"))


def t_embedding_control(d: Path) -> str:
    """Verdicts at the LMs' embedding, which no norm touches: the rule's false positives."""
    return _counts(pd.read_csv(d / "lm_embedding_control.csv"))


def t_bijection_layers(d: Path) -> str:
    """The bijection control at every layer: mean change (nets up / nets, verdict)."""
    df = pd.read_csv(d / "bijection_control.csv")
    return grid(df, ["layer", "setting"], "lam",
                lambda r: f"{r['d_ib_value_mean']:+.3f} ({r['n_up']}/{r['n_nets']}, {r['verdict']})",
                lambda layer, setting: f"{layer}, {setting_label(setting)}", "layer, setting",
                lambda lam: f"swap λ={lam:g}")


def t_bijection(d: Path, layer: str = "layers.3") -> str:
    """The swap's mean change of the IB value (nets up / nets) per setting and lambda, with
    the trained IBNorm-T net's difference beside it where the study measured one."""
    df = pd.read_csv(d / "bijection_control.csv")
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


#: name -> (renderer, the CSV it reads, the doc table it regenerates)
TABLES = {
    "accuracy": (t_accuracy, "mlp_accuracy.csv", "Test accuracy (MLPs)"),
    "ib_layers3": (t_ib_layers3, "mlp_ib_layers3.csv", "IB value of the last hidden layer"),
    "verdicts": (t_verdicts, "mlp_verdict_counts_seed_ranges.csv", "Where IBNorm is higher"),
    "why": (t_why, "mlp_why_layers3.csv", "Why: the compression term"),
    "lm_loss": (t_lm_loss, "lm_val_loss.csv", "LM validation loss"),
    "lm_ib": (t_lm_ib, "lm_ib.csv", "LM IB values"),
    "lm_verdicts": (t_lm_verdicts, "lm_verdict_counts_seed_ranges.csv", "LM verdict counts"),
    "bijection": (t_bijection, "bijection_control.csv", "Bijection control (layers.3)"),
    "bijection_layers": (t_bijection_layers, "bijection_control.csv",
                         "Bijection control, every layer"),
    "lm_embedding_control": (t_embedding_control, "lm_embedding_control.csv",
                             "LM embedding-layer control (verdict counts)"),
    "verdicts_welch": (t_verdicts_welch, "mlp_verdict_counts.csv",
                       "Verdict counts, Welch + Holm + minimum effect (MLPs)"),
    "lm_verdicts_welch": (t_lm_verdicts_welch, "lm_verdict_counts.csv",
                          "Verdict counts, Welch + Holm + minimum effect (LMs)"),
}


def from_run(run: Path, data_dir: Path) -> list[Path]:
    """Convert a study run's summary.csv/comparison.csv into the CSVs the tables read."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _study_common import verdict_counts, write_csv

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
            out[name] = make(data_dir)
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
        for path in from_run(run, data_dir):
            print(f"[study_tables] wrote {path}", file=sys.stderr)
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
