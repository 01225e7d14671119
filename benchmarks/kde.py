"""Speed and agreement of the KDE estimator against the plain-NumPy reference.

    python benchmarks/kde.py            # n in {1000, 5000, 20000} x d in {1, 5, 20, 100}
    python benchmarks/kde.py --quick    # n in {1000, 5000} x d in {1, 20}

Prints a markdown table.  Each measurement runs in its own subprocess so that its peak
memory can be read from ``resource.getrusage`` (the rise of the maximum resident set over
the process's state just before the call).  Both sides compute both bounds (KL and
Bhattacharyya) of I(X; T+Z) = H(T+Z) - d/2 ln(2 pi e s2) with s2 = ``--noise-var``:
ibtools in one blocked pass (float32, default 256 MiB scratch), the reference in two
float64 passes over the full n x n distance matrix, or over blocks of 2000 rows when that
matrix would exceed ``--ref-full-limit`` bytes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

_CHILD = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {here!r})
which, n, d, s2, block = {which!r}, {n}, {d}, {s2}, {block}
t = np.random.default_rng(n * 1000 + d).normal(size=(n, d)).astype(np.float32)
if which == "ibtools":
    import torch
    from ibtools.estimators.kde import KDE
    est = KDE(noise_var=s2, deterministic=True)
    x = np.zeros((n, 1), dtype=np.float32)
    est.mutual_information(x[:200], t[:200])  # warm the code paths
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    r = est.mutual_information(x, t)
    seconds = time.perf_counter() - start
    out = {{"upper": r.details["mi_upper"], "lower": r.details["mi_lower"],
            "rows": r.details["chunk_rows"], "flags": len(r.flags)}}
else:
    import kde_reference as ref
    ref.mi_deterministic(t[:200], s2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    upper = ref.mi_deterministic(t, s2, "upper", block)
    lower = ref.mi_deterministic(t, s2, "lower", block)
    seconds = time.perf_counter() - start
    out = {{"upper": upper, "lower": lower, "rows": block or n}}
out["seconds"] = seconds
out["peak_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024.0
print(json.dumps(out))
"""


def measure(which: str, n: int, d: int, s2: float, block) -> dict:
    code = _CHILD.format(here=str(HERE), which=which, n=n, d=d, s2=s2, block=block)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{which} n={n} d={d} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid only")
    parser.add_argument("--noise-var", type=float, default=1.0)
    parser.add_argument("--ref-full-limit", type=float, default=1e9,
                        help="bytes of the reference's n x n float64 matrix above which it "
                             "works in blocks of 2000 rows")
    args = parser.parse_args(argv)
    ns = (1000, 5000) if args.quick else (1000, 5000, 20000)
    ds = (1, 20) if args.quick else (1, 5, 20, 100)
    print(f"noise_var = {args.noise_var}; times in seconds; peak = rise of max RSS (MiB)\n")
    print("| n | d | ibtools s | numpy s | speed-up | max abs diff (nats) | ibtools rows/block "
          "| ibtools peak MiB | numpy peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in ns:
        for d in ds:
            block = 2000 if 8.0 * n * n > args.ref_full_limit else None
            ours = measure("ibtools", n, d, args.noise_var, None)
            theirs = measure("reference", n, d, args.noise_var, block)
            diff = max(abs(ours["upper"] - theirs["upper"]), abs(ours["lower"] - theirs["lower"]))
            ref_rows = "" if block is None else f" (blocks of {block})"
            print(f"| {n} | {d} | {ours['seconds']:.3f} | {theirs['seconds']:.3f}{ref_rows} | "
                  f"{theirs['seconds'] / ours['seconds']:.1f}x | {diff:.1e} | {ours['rows']} | "
                  f"{ours['peak_mib']:.0f} | {theirs['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
