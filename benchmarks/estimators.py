"""Accuracy, time and peak memory of every estimator on a Gaussian with known MI.

    python benchmarks/estimators.py                # full grid (slow: many minutes)
    python benchmarks/estimators.py --quick        # a small subset
    python benchmarks/estimators.py --methods ksg,ksg-ref --n 100000 --dims 5 --max-seconds 900

The ground truth is jointly Gaussian X, Y with d coordinates per side, coordinate pairs
correlated with rho = sqrt(1 - exp(-2/d)), so that I(X;Y) = 1 nat whatever d (closed form 1
of docs/estimators.md): the table shows how each estimator degrades with dimension at fixed
information.  Each row runs in its own Python subprocess, which reports its own peak
resident memory (``getrusage(RUSAGE_SELF).ru_maxrss``, which includes the interpreter,
torch and the data: the ``base MiB`` column is the same process's peak before the estimate,
so the difference is what the estimator added) and, on CUDA, the peak allocated GPU memory.
Imports (torch, scipy, scikit-learn) happen before the clock starts.

Rows besides the library's estimators:

* ``sklearn`` - scikit-learn's ``mutual_info_regression`` (KSG via Ross's code path, 1-D only).
* ``ksg-ref`` - a plain cKDTree KSG (algorithm 1) in the style of NPEET, written here as the
  reference for ``ksg``: it is fed exactly the geometry ``ksg`` builds (same float32 cast,
  scaling and seeded noise), so the two must agree to 1e-3 nats, and it shows what the
  library's neighbour search saves (NPEET counts marginal neighbours with
  ``query_ball_point``, which walks every point inside each radius).

A method whose module does not exist yet is skipped with a note.  Cells predicted to take
longer than ``--max-seconds`` (from the same method at the previous n and its complexity) are
skipped and listed; a cell that runs past twice that is killed and marked.  Times on a shared
machine are pessimistic: ``wall s`` is elapsed time, ``CPU s`` the CPU time of all the
worker's threads (what an idle machine would spend, spread over its cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time

LIBRARY_METHODS = ("binning", "kde", "ksg", "renyi", "gaussian")
EXTRA_METHODS = ("sklearn", "ksg-ref")
#: How time grows with n, used to predict and skip slow cells.
GROWTH = {"binning": 1.1, "gaussian": 1.0, "kde": 2.0, "renyi": 3.0, "ksg": 1.4,
          "ksg-ref": 1.6, "sklearn": 1.4}


# --------------------------------------------------------------------------- worker side


def gaussian_data(n: int, d: int, seed: int):
    import numpy as np

    rho = math.sqrt(1.0 - math.exp(-2.0 / d))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rho * x + math.sqrt(1.0 - rho**2) * rng.normal(size=(n, d))
    return x, y, 1.0


def reference_ksg(x, y, k: int = 3, seed: int = 0) -> float:
    """KSG algorithm 1 the straightforward way: one cKDTree query for the joint k-th
    neighbour, then ``query_ball_point(return_length=True)`` in each marginal space."""
    import numpy as np
    import torch
    from scipy.spatial import cKDTree
    from scipy.special import digamma

    from ibtools.estimators.ksg import scale_and_jitter

    # the geometry the estimator builds: float32 inputs, then one seeded generator for x, y
    g = torch.Generator().manual_seed(seed)
    xs = scale_and_jitter(torch.as_tensor(x, dtype=torch.float32), 1e-10, g)[0].numpy()
    ys = scale_and_jitter(torch.as_tensor(y, dtype=torch.float32), 1e-10, g)[0].numpy()
    joint = np.hstack([xs, ys])
    eps = cKDTree(joint).query(joint, k=k + 1, p=np.inf, workers=-1)[0][:, k]
    radius = np.nextafter(eps, 0)  # strict "<", the largest float below eps
    n = len(joint)
    total = digamma(k) + digamma(n)
    for part in (xs, ys):
        counts = cKDTree(part).query_ball_point(part, radius, p=np.inf, return_length=True,
                                                workers=-1)
        total -= float(np.mean(digamma(counts)))  # counts include the point: psi(n_x + 1)
    return float(total)


def run_cell(method: str, n: int, d: int, device: str, seed: int) -> dict:
    import resource

    import torch

    x, y, truth = gaussian_data(n, d, seed)
    if device != "cpu" and method not in EXTRA_METHODS:
        x = torch.as_tensor(x, device=device)
        y = torch.as_tensor(y, device=device)
    # import cost is not estimator cost: load what any method may load before the clock
    import scipy.spatial  # noqa: F401
    import sklearn.neighbors  # noqa: F401
    from sklearn.feature_selection import mutual_info_regression

    import ibtools

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    flags: list = []
    if method == "ksg-ref":
        value = reference_ksg(x, y, seed=seed)
    elif method == "sklearn":
        value = float(mutual_info_regression(x, y[:, 0], n_neighbors=3, random_state=seed)[0])
    else:
        r = ibtools.mutual_information(x, y, method=method, seed=seed)
        value, flags = r.value, r.flags
    seconds = time.perf_counter() - start
    out = {"value": value, "truth": truth, "seconds": seconds, "flags": len(flags),
           "cpu_seconds": time.process_time() - cpu_start,
           "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "base_mib": base}
    if device.startswith("cuda"):
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# --------------------------------------------------------------------------- driver


def available(method: str) -> str | None:
    """None when the method can run, else why not."""
    if method in EXTRA_METHODS:
        return None
    if importlib.util.find_spec(f"ibtools.estimators.{method}") is None:
        return f"ibtools/estimators/{method}.py does not exist yet"
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="n in {1000, 10000}, dims in {1, 5}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", default=",".join(LIBRARY_METHODS + EXTRA_METHODS))
    p.add_argument("--n", default=None, help="comma-separated sample sizes")
    p.add_argument("--dims", default=None, help="comma-separated dimensions per side")
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", nargs=3, metavar=("METHOD", "N", "D"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        method, n, d = args.worker[0], int(args.worker[1]), int(args.worker[2])
        print(json.dumps(run_cell(method, n, d, args.device, args.seed)))
        return 0

    ns = [1000, 10_000] if args.quick else [1000, 10_000, 100_000]
    dims = [1, 5] if args.quick else [1, 5, 20, 100]
    if args.n:
        ns = [int(v) for v in args.n.split(",")]
    if args.dims:
        dims = [int(v) for v in args.dims.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    print(f"Gaussian X, Y with d coordinates each, I(X;Y) = 1 nat; device {args.device}; "
          f"seed {args.seed}; {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f} at start\n")
    print("| method | n | d per side | estimate | error | wall s | CPU s | peak MiB | base MiB "
          "| notes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    notes = []
    ref_values: dict = {}
    for method in methods:
        why = available(method)
        if why:
            notes.append(f"{method}: skipped, {why}")
            continue
        for d in dims:
            if method == "sklearn" and d != 1:
                continue
            last = None
            for n in ns:
                if last is not None and last[1] >= 1.0:
                    # below a second fixed costs dominate and the growth law says nothing
                    predicted = last[1] * (n / last[0]) ** GROWTH.get(method, 2.0)
                    if predicted > args.max_seconds:
                        notes.append(f"{method} n={n} d={d}: skipped, predicted "
                                     f"{predicted:.0f} s > {args.max_seconds:.0f} s")
                        continue
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, str(n),
                       str(d), "--device", args.device, "--seed", str(args.seed)]
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True,
                                          timeout=2 * args.max_seconds + 30)
                except subprocess.TimeoutExpired:
                    notes.append(f"{method} n={n} d={d}: killed after "
                                 f"{2 * args.max_seconds + 30:.0f} s")
                    last = (n, 10 * args.max_seconds)
                    continue
                if proc.returncode != 0:
                    err = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?"
                    print(f"| {method} | {n} | {d} | - | - | - | - | - | - | failed: {err} |")
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                last = (n, max(row["seconds"], 1e-3))
                note = f"{row['flags']} flag(s)" if row["flags"] else ""
                if "gpu_peak_mib" in row:
                    note += f" GPU peak {row['gpu_peak_mib']:.0f} MiB"
                if method in ("ksg", "ksg-ref"):
                    ref_values[(method, n, d)] = row["value"]
                    other = ref_values.get(("ksg-ref" if method == "ksg" else "ksg", n, d))
                    if other is not None:
                        note += f" vs other KSG: {row['value'] - other:+.2e}"
                print(f"| {method} | {n} | {d} | {row['value']:.4f} | "
                      f"{row['value'] - row['truth']:+.4f} | {row['seconds']:.2f} | "
                      f"{row['cpu_seconds']:.2f} | "
                      f"{row['peak_mib']:.0f} | {row['base_mib']:.0f} | {note.strip()} |",
                      flush=True)
    if notes:
        print()
        for line in notes:
            print(f"- {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
