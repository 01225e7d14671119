"""Coverage of the estimators' nominal 95% intervals against ground truth, over many seeds.

For each case (data with a known mutual information) and each estimator that is consistent
there, it draws ``--seeds`` independent data sets of ``--n`` rows, asks for ``ci="auto"``
and records whether the interval covers the truth, whether it contains its own estimate,
and whether the estimator flagged the interval as one of its own value (bias larger than
spread).  The same resampled values also give the interval the library built before issue
16 (reflected percentiles of the bootstrap, ``sqrt(m/n)``-scaled percentiles of half-size
subsets), so old and new coverage are compared on identical resamples.

Cases and truths (nats):

* ``gauss-1d``: 1+1-d Gaussian, rho = 0.6: -1/2 ln(1 - rho^2).
* ``gauss-5d``: 5+5-d Gaussian, rho = 0.5 on each coordinate pair: -5/2 ln(1 - rho^2).
* ``independent-1d``: independent 1+1-d Gaussians: 0 (also the population value of the
  binned and matrix-Renyi quantities, so those are consistent there too).
* ``copula-1d``: the 1-d Gaussian pair through exp(x) and y^3 (MI is invariant): the
  Gaussian value; the estimators run with ``transform="copula"``.
* ``label-mixture``: T ~ N(mu_y, 1), Y uniform on 4 classes with means 0, 1.5, 3, 4.5:
  H(Y) - E[H(Y | T)] by quadrature on a fine grid.
* ``discrete-4``: X uniform on 4 symbols, Y = X with probability 0.8, else one of the other
  three: ln 4 - H(0.8, 0.2/3, 0.2/3, 0.2/3).

A row is judged (target: coverage >= 90%) where the estimator is consistent for the truth
and unbiased enough at this n for an interval of the true MI; rows where the bias is known
to dominate (binning at independence with 30 bins) are shown, not judged: their intervals
are flagged as intervals of the estimator's value.

Usage::

    python -m benchmarks.interval_coverage                         # 200 seeds, n = 1000
    python -m benchmarks.interval_coverage --seeds 40 --n 500      # quick look
    python -m benchmarks.interval_coverage --out benchmarks/COVERAGE.md
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is not a package on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks import common

import ibtools

DEFAULT_OUT = Path(__file__).resolve().parent / "COVERAGE.md"
RHO = 0.6
MEANS = (0.0, 1.5, 3.0, 4.5)


# --------------------------------------------------------------------------- truths


def gaussian_truth(rho: float, d: int) -> float:
    return -0.5 * d * math.log(1.0 - rho * rho)


def mixture_truth(means=MEANS) -> float:
    """I(T;Y) for T ~ N(mu_Y, 1), Y uniform: quadrature of H(Y) - E[H(Y|T)]."""
    t = np.linspace(min(means) - 12.0, max(means) + 12.0, 400_001)
    dens = np.exp(-0.5 * (t[None, :] - np.asarray(means)[:, None]) ** 2) / math.sqrt(2 * math.pi)
    p_t = dens.mean(axis=0)
    post = dens / (len(means) * p_t)
    h_post = -(post * np.log(np.where(post > 0, post, 1.0))).sum(axis=0)
    return math.log(len(means)) - float(np.trapezoid(p_t * h_post, t))


def discrete_truth(k: int = 4, keep: float = 0.8) -> float:
    other = (1.0 - keep) / (k - 1)
    return math.log(k) + keep * math.log(keep) + (1.0 - keep) * math.log(other)


# --------------------------------------------------------------------------- data


def gaussian_pair(rng, n: int, rho: float, d: int):
    x = rng.normal(size=(n, d))
    y = rho * x + math.sqrt(1.0 - rho * rho) * rng.normal(size=(n, d))
    return x, y


def draw(case: str, rng, n: int):
    if case == "gauss-1d":
        return gaussian_pair(rng, n, RHO, 1)
    if case == "gauss-5d":
        return gaussian_pair(rng, n, 0.5, 5)
    if case == "independent-1d":
        return rng.normal(size=(n, 1)), rng.normal(size=(n, 1))
    if case == "copula-1d":
        x, y = gaussian_pair(rng, n, RHO, 1)
        return np.exp(x), y ** 3
    if case == "label-mixture":
        y = rng.integers(0, len(MEANS), size=n)
        return (np.asarray(MEANS)[y] + rng.normal(size=n))[:, None], y
    if case == "discrete-4":
        x = rng.integers(0, 4, size=n)
        flip = rng.random(n) >= 0.8
        y = np.where(flip, (x + rng.integers(1, 4, size=n)) % 4, x)
        return x, y
    raise ValueError(case)


#: (case, truth, [(estimator label, method, settings, judged, rows or None for --n)]).
#: Not judged: KSG on 5+5 dims (it reads low by several of its sds at n = 1000, as its
#: docstring says) and binning at independence (plug-in bias of 30 x 30 cells); both flag
#: their intervals as intervals of the estimator's value.  Renyi runs on 300 rows (three
#: O(m^3) eigendecompositions per resample).
CASES = [
    ("gauss-1d", gaussian_truth(RHO, 1), [("ksg", "ksg", {}, True, None),
                                           ("gaussian", "gaussian", {}, True, None)]),
    ("gauss-5d", gaussian_truth(0.5, 5), [("ksg", "ksg", {}, False, None),
                                           ("gaussian", "gaussian", {}, True, None)]),
    ("independent-1d", 0.0, [("ksg", "ksg", {}, True, None),
                             ("gaussian", "gaussian", {}, True, None),
                             ("renyi", "renyi", {}, True, 300),
                             ("binning (30 bins)", "binning", {}, False, None)]),
    ("copula-1d", gaussian_truth(RHO, 1), [
        ("ksg copula", "ksg", {"transform": "copula"}, True, None),
        ("gaussian copula", "gaussian", {"transform": "copula"}, True, None)]),
    ("label-mixture", mixture_truth(), [("ksg (Ross)", "ksg", {}, True, None)]),
    ("discrete-4", discrete_truth(), [("binning", "binning", {}, True, None)]),
]


NOTES = ("Not judged: KSG on 5+5 dims reads low by several of its own sds at n = 1000 (its "
         "known high-dimension bias) and binning at independence reads the plug-in bias of "
         "30 x 30 cells; both flag most of their intervals as intervals of the estimator's "
         "value, not of the true MI. Matrix-Renyi at independence is flagged the same way "
         "(its value is positive at finite m), and its interval still covers 0 because the "
         "half-size subsets' shift, extrapolated at 1/m, takes the bias off the centre.")


# --------------------------------------------------------------------------- old intervals


def old_interval(kind: str, value: float, samples, n: int, confidence: float = 0.95):
    """The construction before issue 16, from the same resampled values."""
    arr = np.asarray(samples, dtype=float)
    alpha = 1.0 - confidence
    if kind == "bootstrap":
        lo, hi = np.quantile(arr, [alpha / 2, 1 - alpha / 2])
        return 2 * value - hi, 2 * value - lo
    dev = (arr - arr.mean()) * math.sqrt((n // 2) / n)
    lo, hi = np.quantile(dev, [alpha / 2, 1 - alpha / 2])
    return value + lo, value + hi


# --------------------------------------------------------------------------- driver


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a killed run leaves the old table."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_row(case, truth, method, settings, seeds: int, n: int, base_seed: int) -> dict:
    """Coverage and spread of one estimator's intervals on ``seeds`` data sets."""
    case_id = [c[0] for c in CASES].index(case)
    cover = own = flagged = old_cover = 0
    values, widths = [], []
    start = time.perf_counter()
    for s in range(seeds):
        rng = np.random.default_rng([base_seed, case_id, s])
        x, y = draw(case, rng, n)
        r = ibtools.mutual_information(x, y, method=method, ci="auto", n_permutations=0,
                                       seed=s, **settings)
        lo, hi = r.ci
        cover += lo <= truth <= hi
        own += lo <= r.value <= hi
        flagged += any(f.startswith("interval of the estimator's value") for f in r.flags)
        o_lo, o_hi = old_interval(r.ci_kind, r.value, r.details["resample_values"], n)
        old_cover += o_lo <= truth <= o_hi
        values.append(r.value)
        widths.append(hi - lo)
    return {"cover": cover / seeds, "own": own / seeds, "flagged": flagged / seeds,
            "old_cover": old_cover / seeds, "mean": float(np.mean(values)),
            "sd": float(np.std(values, ddof=1)), "width": float(np.mean(widths)),
            "kind": r.ci_kind, "seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=200)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="base seed of the data")
    p.add_argument("--cases", default=",".join(c[0] for c in CASES))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1: small calls gain nothing from more)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = [c for c in CASES if c[0] in args.cases.split(",")]
    head = ["case", "truth", "estimator", "n", "interval", "seeds", "coverage", "old coverage",
            "contains value", "flagged", "mean value", "bias / sd", "mean width", "s",
            "verdict"]
    rows, failed = [], 0
    for case, truth, estimators in chosen:
        for label, method, settings, judged, rows_override in estimators:
            n = rows_override or args.n
            res = run_row(case, truth, method, settings, args.seeds, n, args.seed)
            bias_sd = (res["mean"] - truth) / res["sd"] if res["sd"] > 0 else float("nan")
            verdict = "not judged (bias dominates)"
            if judged:
                ok = res["cover"] >= 0.90 and res["own"] == 1.0
                failed += not ok
                verdict = "PASS" if ok else "FAIL"
            rows.append([case, f"{truth:.4f}", label, str(n), res["kind"], str(args.seeds),
                         f"{res['cover']:.1%}", f"{res['old_cover']:.1%}", f"{res['own']:.0%}",
                         f"{res['flagged']:.0%}", f"{res['mean']:.4f}", f"{bias_sd:+.2f}",
                         f"{res['width']:.4f}", f"{res['seconds']:.0f}", verdict])
            print(" | ".join(rows[-1]), flush=True)
    table = common.markdown_table(head, rows)
    text = "\n".join([
        "# Interval coverage (nominal 95%)", "",
        f"`python -m benchmarks.interval_coverage {' '.join(argv if argv is not None else sys.argv[1:])}`"
        f" on {time.strftime('%Y-%m-%d %H:%M')}; n = {args.n} rows per data set, "
        f"{args.seeds} data sets per row (n column where a row differs), 20 resamples per "
        f"interval (the default), {args.threads} torch thread(s).", "",
        *[f"- {line}" for line in common.machine_description("cpu")],
        f"- {common.load_note()}", "",
        "coverage: share of intervals containing the truth; old coverage: the pre-issue-16 "
        "construction on the same resamples; flagged: share flagged as an interval of the "
        "estimator's value (bias larger than spread); bias / sd: (mean value - truth) over "
        "the sd of the values across data sets.", "", table, "", NOTES, ""])
    print(text)
    write_atomic(args.out, text)
    print(f"written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
