"""Speed and agreement of the KDE estimator against the plain-NumPy reference.

    python benchmarks/kde.py            # n in {1000, 5000, 20000} x d in {1, 5, 20, 100}
    python benchmarks/kde.py --quick    # n in {1000, 5000} x d in {1, 20}
    python -m benchmarks.kde --blocks   # the kernel's rate at wide d against torch.mm

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


def block_shapes(n: int = 8000, dims=(256, 1024), noise_var: float = 40.0,
                 repeats: int = 3) -> str:
    """The pairwise kernel's rate (fused numba engine) with 256-row blocks and with the
    blocks ``kde_kernel._numba_rows`` chooses, against one ``torch.mm`` of the full
    (n, d + 2) x (d + 2, n) product, on one thread and on torch's default count (the load
    check off, so that the count is the one named).  GFLOP/s are 2 (d + 2) flops per kernel
    entry the blocks compute (the triangle plus the diagonal blocks in full), by CPU time
    and by wall time of the best run; "useful" counts the triangle only."""
    import math
    import os
    import time

    import torch

    sys.path.insert(0, str(HERE.parent))
    from benchmarks import common
    from ibtools.estimators import kde_kernel as kk

    def best(fn):
        out = (math.inf, math.inf)
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            out = min(out, (time.process_time() - cpu, time.perf_counter() - wall))
        return out

    default = torch.get_num_threads()
    saved_env, saved_rows = os.environ.get("IBTOOLS_THREADS"), kk._numba_rows
    os.environ["IBTOOLS_THREADS"] = "torch"
    rows_out = []
    try:
        for d in dims:
            t = torch.randn(n, d, generator=torch.Generator().manual_seed(d))
            a, b = torch.randn(n, d + 2), torch.randn(d + 2, n)
            full = torch.empty(n, n)
            chosen = saved_rows(n, d)
            for threads in sorted({1, default}):
                torch.set_num_threads(threads)
                torch.mm(a, b, out=full)
                cpu, wall = best(lambda a=a, b=b, full=full: torch.mm(a, b, out=full))
                flops = 2.0 * (d + 2) * n * n
                rows_out.append([f"n={n}, d={d}", threads, "torch.mm (n, d+2) x (d+2, n)",
                                 "-", f"{cpu:.3f} ({wall:.3f})",
                                 f"{flops / cpu / 1e9:.1f} ({flops / wall / 1e9:.1f})", "-",
                                 "-"])
                values = {}
                for label, rows in (("kernel, 256-row blocks", 256),
                                    ("kernel, chosen blocks", chosen)):
                    kk._numba_rows = lambda n_, d_, r=rows: r
                    kl, bd, info = kk.pairwise_log_means(t, noise_var, 1 << 30)
                    assert info["engine"] == "numba", info
                    values[label] = (kl, bd)
                    kcpu, kwall = best(lambda t=t: kk.pairwise_log_means(t, noise_var, 1 << 30))
                    kflops = 2.0 * (d + 2) * info["pairs"]
                    useful = 2.0 * (d + 2) * n * (n + 1) / 2
                    rows_out.append([f"n={n}, d={d}", threads, label, info["chunk_rows"],
                                     f"{kcpu:.3f} ({kwall:.3f})",
                                     f"{kflops / kcpu / 1e9:.1f} ({kflops / kwall / 1e9:.1f})",
                                     f"{useful / kcpu / 1e9:.1f}",
                                     f"{100 * kflops / kcpu / (flops / cpu):.0f} %"])
                    kk._numba_rows = saved_rows
                (k1, b1), (k2, b2) = values.values()
                diff = max(float((k1 - k2).abs().max()), float((b1 - b2).abs().max()))
                rows_out[-1][2] += f" (max diff vs 256 rows {diff:.1e} nats)"
    finally:
        kk._numba_rows = saved_rows
        torch.set_num_threads(default)
        if saved_env is None:
            os.environ.pop("IBTOOLS_THREADS", None)
        else:
            os.environ["IBTOOLS_THREADS"] = saved_env
    table = common.markdown_table(
        ["case", "threads", "what", "rows/block", "best CPU s (wall s)",
         "GFLOP/s by CPU (by wall)", "useful GFLOP/s by CPU", "rate / torch.mm rate (CPU)"],
        rows_out)
    return "\n".join([*common.machine_description(), "", table, "", common.load_note()])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid only")
    parser.add_argument("--noise-var", type=float, default=1.0)
    parser.add_argument("--ref-full-limit", type=float, default=1e9,
                        help="bytes of the reference's n x n float64 matrix above which it "
                             "works in blocks of 2000 rows")
    parser.add_argument("--blocks", action="store_true",
                        help="only the block-shape rows: the kernel at d = 256 and 1024 "
                             "against torch.mm")
    args = parser.parse_args(argv)
    if args.blocks:
        print(block_shapes())
        return
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
