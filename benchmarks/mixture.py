"""Speed of the Monte Carlo mixture entropy ("mixture") against KDE's two bounds.

    python -m benchmarks.mixture                 # n = 10 000, d in {64, 512}
    python -m benchmarks.mixture --quick         # n = 2 000, d in {16, 64}
    python -m benchmarks.mixture --device cuda   # the same on a GPU

Issue #17's row: n = 10 000 centres, d = 64 and d = 512, as many draws as bring the Monte
Carlo standard error below 0.01 nat (``n_mc="auto"``, ``mc_tolerance=0.01``), in at most
three times the time KDE takes for its KL and Bhattacharyya bounds of the same mixture.

The rows are standard-normal, and the noise variance is set per row relative to d (pairwise
squared distances are about 2d): ``s2 = d / 64`` leaves every row its own component (the
value nears ln n and the draws barely vary), ``s2 = 5 d / 64`` sits between (KDE's bounds
are several nats apart, the draws vary most), ``s2 = 20 d / 64`` merges most components.
The cost of KDE does not depend on s2; that of the Monte Carlo grows with the spread of its
draws, so the middle row is the hard one.  Each time is the best of ``--repeat`` calls after
a warm-up call (numba compiles its kernels on first use), KDE and the mixture called in
turn; the ratio is of CPU time (``time.process_time``: on a shared machine wall time
measures the neighbours too), and the load average is printed with the table.  Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch

from ibtools.estimators.kde import KDE
from ibtools.estimators.mixture import MixtureEntropy

#: Noise variance of each row, times d / 64.
REGIMES = {"separated": 1.0, "mid-overlap": 5.0, "merged": 20.0}
TARGET_RATIO = 3.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved(calls: dict, repeat: int, device: torch.device) -> dict:
    """{name: (result, best CPU s, best wall s)}: each call once to warm up, then the calls
    in turn ``repeat`` times."""
    best = {name: [None, math.inf, math.inf] for name in calls}
    for call in calls.values():
        call()
    for _ in range(repeat):
        for name, call in calls.items():
            _sync(device)
            cpu, wall = time.process_time(), time.perf_counter()
            result = call()
            _sync(device)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            row = best[name]
            row[0] = result
            row[1], row[2] = min(row[1], cpu), min(row[2], wall)
    return best


def rows(n: int, d: int, data: str) -> torch.Tensor:
    """``gauss``: standard-normal rows (how crowded a row's neighbourhood is then follows
    its distance from the middle, which the mixture's centre covariates exploit);
    ``clusters``: 50 clusters of unequal size and spread (std 0.3 to 1.5) around centres
    drawn with std 1, so crowding varies with the cluster, not with the distance from the
    middle."""
    g = torch.Generator().manual_seed(d)
    if data == "gauss":
        return torch.randn(n, d, generator=g)
    centres = torch.randn(50, d, generator=g)
    weights = torch.rand(50, generator=g) + 0.2
    label = torch.multinomial(weights / weights.sum(), n, replacement=True, generator=g)
    spread = 0.3 + 1.2 * torch.rand(50, generator=g)
    return centres[label] + spread[label, None] * torch.randn(n, d, generator=g)


def measure(n: int, d: int, scale: float, repeat: int, device: torch.device, tol: float,
            data: str = "gauss"):
    t = rows(n, d, data).to(device)
    x = torch.zeros(n, 1, device=device)
    s2 = scale * d / 64.0
    kde = KDE(noise_var=s2, deterministic=True, n_permutations=0)
    mix = MixtureEntropy(noise_var=s2, deterministic=True, mc_tolerance=tol, n_permutations=0)
    got = _interleaved({"kde": lambda: kde.mutual_information(x, t),
                        "mix": lambda: mix.mutual_information(x, t)}, repeat, device)
    (k, kde_cpu, kde_wall), (r, mix_cpu, mix_wall) = got["kde"], got["mix"]
    return {"s2": s2, "kde_cpu": kde_cpu, "kde_wall": kde_wall, "lower": k.details["mi_lower"],
            "upper": k.details["mi_upper"], "engine": k.details["engine"],
            "mix_cpu": mix_cpu, "mix_wall": mix_wall, "value": r.value,
            "se": r.details["mc_se"], "evaluations": r.details["evaluations"],
            "centres": r.details["centres_drawn"], "draws": r.details["draws_per_centre"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 2000, d in {16, 64}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: CPU time is then the work done)")
    parser.add_argument("--data", choices=("gauss", "clusters"), nargs="+", default=["gauss"],
                        help="row distributions (see rows())")
    parser.add_argument("--dims", type=int, nargs="+", default=None,
                        help="dimensions (default 64 512, or 16 64 with --quick)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="Monte Carlo standard error to reach, nats")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n, dims = (2000, (16, 64)) if args.quick else (10_000, (64, 512))
    dims = tuple(args.dims) if args.dims else dims
    print(f"n = {n}, device {device}, {torch.get_num_threads()} torch threads; "
          f"mc_tolerance = {args.tolerance} nat; CPU s (wall s), best of {args.repeat}, "
          f"KDE and mixture interleaved; load average at start "
          f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())} (1 / 5 / 15 min)\n")
    print("| data | d | regime | noise_var | KDE bounds CPU s (wall) | KDE lower .. upper | "
          "mixture CPU s (wall) | value +- se | evaluations (centres, draws each) | "
          "CPU ratio | <= 3x |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for data, d in ((data, d) for data in args.data for d in dims):
        for name, scale in REGIMES.items():
            m = measure(n, d, scale, args.repeat, device, args.tolerance, data)
            ratio = m["mix_cpu"] / m["kde_cpu"]
            print(f"| {data} | {d} | {name} | {m['s2']:g} | {m['kde_cpu']:.2f} ({m['kde_wall']:.2f}, "
                  f"{m['engine']}) | {m['lower']:.3f} .. {m['upper']:.3f} | "
                  f"{m['mix_cpu']:.2f} ({m['mix_wall']:.2f}) | {m['value']:.3f} +- "
                  f"{m['se']:.4f} | {m['evaluations']} ({m['centres']}, {m['draws'][0]}-"
                  f"{m['draws'][1]}) | {ratio:.2f}x | "
                  f"{'yes' if ratio <= TARGET_RATIO and m['se'] <= args.tolerance else 'no'} |",
                  flush=True)
    print(f"\nload average at end {' / '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
