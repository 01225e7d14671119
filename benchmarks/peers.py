"""ibtools against the peer libraries themselves, in one process, interleaved.

Run from the benchmark-only virtual environment that holds the peers (they are never
ibtools dependencies)::

    python -m venv /path/to/bench-venv && /path/to/bench-venv/bin/pip install -e . \\
        npeet-plus infomeasure scikit-learn benchmark-mi
    /path/to/bench-venv/bin/python -m benchmarks.peers [--quick] [--threads N]

Cases: KSG on 1+1 dimensions (n = 10^4, 10^5) against scikit-learn's
``mutual_info_regression`` and npeet-plus's ``mi``; KSG on 5+5 dimensions against npeet-plus
and BMI's KSG (chebyshev metric, k = 3, one neighbourhood, no standardisation); plug-in MI of
two discrete variables (ibtools' binning on symbols) against infomeasure's ``discrete``.
Each round calls every implementation once, in turn, so a change in the machine's load
reaches all of them alike; a row keeps the minimum wall and CPU time over the rounds
(CPU time is the process's, all threads).  Where the algorithm is the same, the estimates
must agree to 1e-6 nats: the table gives each peer's difference from ibtools.  ibtools
runs in float64 here, as the peers do; its float32 default rounds the data first.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from benchmarks.common import load_note, markdown_table

AGREE = 1e-6


def _gaussian(n: int, d: int, seed: int):
    """X, Y with d coordinates each, I(X;Y) = 1 nat spread evenly over the pairs."""
    rho = math.sqrt(1.0 - math.exp(-2.0 / d))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = rho * x + math.sqrt(1 - rho * rho) * rng.standard_normal((n, d))
    # standardised here: ibtools and scikit-learn scale every column to unit spread, npeet
    # and BMI (standardize=False) do not, and the max-norm neighbourhoods depend on it
    return [(a - a.mean(axis=0)) / a.std(axis=0) for a in (x, y)]


def _ibtools_ksg(x, y):
    from ibtools.estimators import KSG

    est = KSG(k=3, dtype="float64", n_permutations=0)
    return lambda: float(est.mutual_information(x, y).value)


def _sklearn_ksg(x, y):
    from sklearn.feature_selection import mutual_info_regression

    return lambda: float(mutual_info_regression(x, y[:, 0], n_neighbors=3, random_state=0)[0])


def _npeet_ksg(x, y):
    from npeet_plus import estimators as npeet

    return lambda: float(npeet.mi(x, y, k=3, base=math.e))


def _bmi_ksg(x, y):
    from bmi.estimators import KSGEnsembleFirstEstimator

    est = KSGEnsembleFirstEstimator(neighborhoods=(3,), standardize=False,
                                    metric_x="chebyshev")
    return lambda: float(est.estimate(x, y))


def _ibtools_discrete(x, y):
    from ibtools.estimators import Binning

    est = Binning(n_permutations=0, dtype="float64")
    return lambda: float(est.mutual_information(x, y, discrete_x=True, discrete_y=True).value)


def _infomeasure_discrete(x, y):
    import infomeasure as im

    return lambda: float(im.mutual_information(x, y, approach="discrete", base="e"))


def interleaved(fns: dict, rounds: int) -> dict:
    """{name: (value, min wall s, min CPU s)} over ``rounds`` rounds, each calling every
    function once in turn."""
    best = {name: [None, math.inf, math.inf] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            value = fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            row = best[name]
            row[0] = value if row[0] is None else row[0]
            row[1], row[2] = min(row[1], wall), min(row[2], cpu)
    return best


def _case(label, makers, data, rounds, same_algorithm):
    fns = {}
    for name, make in makers.items():
        try:
            fns[name] = make(*data)
        except ImportError as exc:
            print(f"  {label}: {name} skipped ({exc})", flush=True)
    small = tuple(a[:500] for a in data)
    for name, make in makers.items():  # warm-up: imports, compilation, thread pools
        if name in fns:
            make(*small)()
    results = interleaved(fns, rounds)
    rows = []
    ib_value, ib_wall, ib_cpu = results["ibtools"]
    for name, (value, wall, cpu) in results.items():
        diff = "-" if name == "ibtools" else f"{abs(value - ib_value):.1e}"
        verdict = "" if name == "ibtools" or name not in same_algorithm else (
            "agree" if abs(value - ib_value) <= AGREE else "DIFFER")
        rows.append([label, name, f"{value:.6f}", f"{wall:.3f}", f"{cpu:.3f}",
                     "-" if name == "ibtools" else f"{cpu / ib_cpu:.2f}x",
                     "-" if name == "ibtools" else f"{wall / ib_wall:.2f}x", diff, verdict])
    print(markdown_table(["case", "implementation", "estimate (nats)", "min wall s",
                          "min CPU s", "peer/ibtools CPU", "peer/ibtools wall",
                          "abs. diff vs ibtools", "same algorithm"], rows), flush=True)
    print(f"- {load_note()}\n", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller n (a smoke run)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for ibtools (default 1: CPU time then "
                             "compares like with like against the single-threaded peers)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bmi-n", type=int, default=10_000,
                        help="rows for the BMI comparison (its KSG is O(n^2) on the CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scale = 10 if args.quick else 1
    print(f"# ibtools vs peer libraries ({time.strftime('%Y-%m-%d %H:%M')}, torch threads "
          f"{args.threads}, {args.rounds} interleaved rounds)\n- {load_note()}\n", flush=True)
    one = {"ibtools": _ibtools_ksg, "scikit-learn": _sklearn_ksg, "npeet-plus": _npeet_ksg}
    for n in (10_000, 100_000):
        _case(f"KSG 1+1 d, n={n // scale}", one, _gaussian(n // scale, 1, 0), args.rounds,
              {"npeet-plus", "scikit-learn"})
    five = {"ibtools": _ibtools_ksg, "npeet-plus": _npeet_ksg}
    _case(f"KSG 5+5 d, n={100_000 // scale}", five, _gaussian(100_000 // scale, 5, 1),
          args.rounds, {"npeet-plus"})
    bmi = {"ibtools": _ibtools_ksg, "npeet-plus": _npeet_ksg, "BMI": _bmi_ksg}
    _case(f"KSG 5+5 d, n={args.bmi_n // scale}", bmi, _gaussian(args.bmi_n // scale, 5, 2),
          args.rounds, {"npeet-plus", "BMI"})
    rng = np.random.default_rng(3)
    x = rng.integers(0, 64, 1_000_000 // scale)
    y = (x % 8 + (rng.random(x.shape) < 0.2) * rng.integers(0, 8, x.shape)) % 8
    _case(f"plug-in MI, 64 x 8 symbols, n={x.shape[0]}",
          {"ibtools": _ibtools_discrete, "infomeasure": _infomeasure_discrete}, (x, y),
          args.rounds, {"infomeasure"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
