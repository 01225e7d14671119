"""Bijection control for the IBNorm study: how much "IB gain" does swapping IBNorm into a
trained LayerNorm MLP report, when the swap changes no mutual information?

    python examples/ibnorm_bijection_control.py [--out study-out/bijection_control] [--quick]
        [--seeds 10] [--data-dir docs/data]

Trains LayerNorm funnel MLPs on digits (the study's architecture and training), then, in
each trained net and without any retraining, replaces every LayerNorm by IBNorm-T with the
same gamma and beta at lambda in {0.5, 1, 2, 4} (``ibtools.swap_norms``).  Both nets are
measured on the 450 test digits with every estimator setting below, and the swap's
difference (swapped minus original, the same net) is reported per layer and setting.

Why the true difference is zero: the nets are deterministic and the 450 test digits are
distinct, so for any layer whose outputs stay distinct on the sample, I(X;T) = I(T_prev;T)
= ln 450 and I(T;Y) = H(Y) -- for the original and the swapped net alike, and so the IB
value I(T;Y) - beta I(T_prev;T) is the same constant.  IBNorm standardizes each row, then
applies a strictly monotone phi to every coordinate and re-standardizes the row; with the
same gamma and beta, the swapped block's output is a function of the original block's
standardized input, and it is one-to-one on the sample whenever its rows stay distinct.
That can fail only when floating point merges rows (phi = tanh(lam u)/lam saturates, so at
large lam coordinates far out round to the same float); the script counts distinct rows of
every layer in every net (``distinct_rows``) and says when a row pair merges.  Every
measured difference is therefore the estimator's resolution at work, not information.

Writes into OUT ``control.csv`` (per lambda, layer and setting: mean and sd over nets of the
swap's change of the IB value, I(T;Y) and I(T_prev;T), how many nets moved up, the Welch /
Holm verdict of :mod:`ibtools.compare` against the original nets, and the trained IBNorm-T
net's difference from the study's table where it has one), ``control.md`` and
``environment.json``; ``--data-dir`` also writes ``bijection_control.csv`` and
``bijection_control_environment.json`` there.
The default (10 nets, 4 lambdas, 11 settings) takes a few minutes of CPU time; ``--quick``
(2 nets, 3 epochs, lambda 1 and 4, 4 settings) well under a minute.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _study_common import Variant, markdown_table, study_arguments, write_csv  # noqa: E402
from _study_runs import train_all  # noqa: E402
from ibnorm_mlp_digits import BETA, FULL_TRAINING, QUICK_TRAINING  # noqa: E402

from ibtools.results import write_atomic  # noqa: E402

LAMS = (0.5, 1.0, 2.0, 4.0)
QUICK_LAMS = (1.0, 4.0)
FULL_ESTIMATORS = [
    "binning:bin_width=0.1", "binning:bin_width=0.5",
    "kde:noise_var=0.01", "kde:noise_var=0.01,bound='lower'",
    "kde:noise_var=0.1", "kde:noise_var=0.1,bound='lower'",
    "ksg:k=1,transform='copula'", "ksg:k=3,transform='copula'",
    "ksg:k=10,transform='copula'", "ksg:k=30,transform='copula'",
    "mixture:noise_var=0.1"]
QUICK_ESTIMATORS = ["binning:bin_width=0.5", "kde:noise_var=0.1",
                    "kde:noise_var=0.1,bound='lower'", "ksg:k=3,transform='copula'"]
LAYERS = ["layers.0", "layers.1", "layers.2", "layers.3"]
QUANTITIES = ("ib_value", "i_ty", "i_prev_t")
#: The study's trained-net table (layers.3, mean over the 10 seeds of the default study),
#: shipped with the docs.
TRAINED_TABLE = (Path(__file__).resolve().parents[1] / "docs" / "data" / "mlp_v2"
                 / "mlp_ib_layers3.csv")


def swapped_nets(checkpoint: str, lams) -> dict:
    """The trained LayerNorm net and, per lambda, a copy with IBNorm-T swapped in."""
    import ibtools

    base, _ = ibtools.load_model(checkpoint)
    nets = {0.0: base}
    for lam in lams:
        net = copy.deepcopy(base)
        ibtools.swap_norms(net, to="ib-T", lam=lam)
        nets[lam] = net.eval()
    return nets


def distinct_rows(nets: dict) -> list[dict]:
    """Distinct output rows of every layer of every net on the test digits (450 = none merged).

    Also counts the distinct (original row, swapped row) pairs: when that equals both nets'
    counts, the swapped layer is a one-to-one function of the original layer on the sample.
    """
    import torch

    import ibtools

    acts = {lam: ibtools.capture_activations(net, "digits", layers=LAYERS) for lam, net in nets.items()}
    rows = []
    for lam, a in acts.items():
        for layer in LAYERS:
            t, t0 = a[layer].flatten(1), acts[0.0][layer].flatten(1)
            rows.append({"lam": lam, "layer": layer, "n_rows": len(t),
                         "distinct": len(t.unique(dim=0)),
                         "distinct_pairs": len(torch.cat([t0, t], dim=1).unique(dim=0))})
    return rows


def measure(runs: dict, lams, estimators, out: Path, log) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Analyze every original and swapped net; one results table and the distinctness table."""
    import ibtools
    from ibtools import results as results_io

    tables, checks = [], []
    for (tag, seed), checkpoints in runs.items():
        nets = swapped_nets(str(checkpoints[-1]), lams)
        checks += [{"seed": seed, **r} for r in distinct_rows(nets)]
        start = time.perf_counter()
        named = {f"seed{seed}_lam{lam:g}": net for lam, net in nets.items()}
        table = ibtools.analyze(named, data="digits", estimators=estimators, betas=[BETA],
                                layers=LAYERS, reference="previous", max_samples=450, seed=0,
                                progress=False)
        table["net_seed"] = seed
        table["swap_lam"] = table["model"].str.rsplit("_lam", n=1).str[-1].astype(float)
        tables.append(table)
        log(f"[control] seed {seed}: {len(nets)} nets measured in {time.perf_counter() - start:.1f} s")
    table = pd.concat(tables, ignore_index=True)
    results_io.save_results(results_io.order_columns(table), out)
    return table, pd.DataFrame(checks)


def _trained_differences() -> dict:
    """{(lam, setting): trained IBNorm-T minus LayerNorm IB value} from the study's table."""
    if not TRAINED_TABLE.exists():
        return {}
    t = pd.read_csv(TRAINED_TABLE)
    base = t[t["norm"] == "layer"].set_index("setting")["ib_value_mean"]
    ib = t[t["norm"] == "ib-T"]
    return {(float(r.lam), r.setting): r.ib_value_mean - base.get(r.setting, float("nan"))
            for r in ib.itertuples()}


def control_table(table: pd.DataFrame, checks: pd.DataFrame) -> pd.DataFrame:
    """Per (lambda, layer, setting): the swap's paired change and its verdict under the
    study's rule (Welch over nets, Holm over every cell, minimum effect)."""
    from ibtools import compare

    keys = ["net_seed", "layer", "setting"]
    original = table[table["swap_lam"] == 0].set_index(keys)
    trained = _trained_differences()
    merged = checks.groupby(["lam", "layer"])["distinct"].min()
    cells, extra = [], []
    for (lam, layer, setting), g in table[table["swap_lam"] > 0].groupby(
            ["swap_lam", "layer", "setting"], sort=True):
        g = g.set_index(keys)
        base = original.loc[g.index]
        delta = {q: g[q] - base[q] for q in QUANTITIES}
        cells.append(({"lam": lam, "layer": layer, "setting": setting},
                      g["ib_value"].to_numpy(), base["ib_value"].to_numpy()))
        extra.append({"n_nets": len(g), "n_up": int((delta["ib_value"] > 0).sum()),
                      **{f"d_{q}_mean": delta[q].mean() for q in QUANTITIES},
                      "d_ib_value_sd": delta["ib_value"].std(ddof=1),
                      "min_distinct_rows": int(min(merged.get((lam, layer), 0),
                                                   merged.get((0.0, layer), 0))),
                      "trained_d_ib_value": trained.get((lam, setting), float("nan"))
                      if layer == "layers.3" else float("nan")})
    verdicts = compare.compare_cells(cells)
    out = pd.concat([verdicts[["lam", "layer", "setting"]], pd.DataFrame(extra),
                     verdicts[["p", "p_adj", "cohens_d", "verdict"]]], axis=1)
    out["share_of_trained"] = out["d_ib_value_mean"] / out["trained_d_ib_value"]
    return out


def main() -> None:
    args = study_arguments(__doc__.splitlines()[0], "study-out/bijection_control", default_seeds=10,
                           extra=[("--data-dir", {"default": None,
                                                  "help": "also write bijection_control.csv "
                                                          "there (e.g. docs/data)"})])
    from ibtools.environment import describe_environment, environment_lines

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lams = QUICK_LAMS if args.quick else LAMS
    estimators = QUICK_ESTIMATORS if args.quick else FULL_ESTIMATORS
    start = time.perf_counter()
    runs = train_all([Variant("mlp", "layer", 0.0)], list(range(args.seeds)), out,
                     QUICK_TRAINING if args.quick else FULL_TRAINING, args.device, jobs=args.jobs)
    table, checks = measure(runs, lams, estimators, out, log=lambda m: print(m, flush=True))
    control = control_table(table, checks)
    env = describe_environment(args.device)
    write_csv(control, out / "control.csv")
    write_csv(checks, out / "distinct_rows.csv")
    write_atomic(out / "environment.json", json.dumps(env, indent=2) + "\n")
    merged = checks[checks["distinct"] < checks["n_rows"]]
    lines = ["# Bijection control: IBNorm-T swapped into trained LayerNorm MLPs", "",
             f"{args.seeds} nets; the true change of every quantity is 0 "
             + ("(every layer of every net keeps all 450 rows distinct)." if merged.empty else
                f"where rows stay distinct; {len(merged)} (net, lambda, layer) merged rows: "
                "see distinct_rows.csv."), "",
             markdown_table(control.drop(columns=["p", "cohens_d"])), "",
             "## Environment", "", *[f"- {line}" for line in environment_lines(env)]]
    write_atomic(out / "control.md", "\n".join(lines) + "\n")
    if args.data_dir:  # the shipped data carry the machine that measured them
        write_csv(control, Path(args.data_dir) / "bijection_control.csv")
        write_atomic(Path(args.data_dir) / "bijection_control_environment.json",
                     json.dumps(env, indent=2) + "\n")
    counts = control["verdict"].value_counts().to_dict()
    print(f"[control] {len(control)} cells, verdicts {counts}; "
          f"{time.perf_counter() - start:.1f} s; {out / 'control.md'}")


if __name__ == "__main__":
    main()
