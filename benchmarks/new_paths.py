"""Every new path measured in one runner (issue #22 section 4), one markdown table.

    nice -n 10 python -m benchmarks.new_paths                   # every section
    nice -n 10 python -m benchmarks.new_paths --quick           # smaller cases (a smoke run)
    python -m benchmarks.new_paths --only crossover,per_class   # some sections
    python -m benchmarks.new_paths --device cuda                # the estimator rows on a GPU

Sections (``--only``):

- ``crossover``: KSG with brute force against the compiled k-d tree over n and the joint
  dimension, the measurement behind ``neighbours.choose_backend``'s rule (the row says which
  backend ``auto`` picks there).
- ``per_class``: the Gaussian and KDE I(T;Y) on token-like labels (Zipf-sized classes), the
  one-pass path against the old one-pass-per-class formula computed here.
- ``auto``: ``method="auto"`` against the estimators it calls (Gaussian-copula and KSG on
  normal scores; Ross's KSG for a discrete Y).
- ``mixture``: the Monte Carlo mixture entropy against KDE's two bounds
  (``benchmarks/mixture.py``'s case).
- ``tracking``: training the demo MLP with ``ibtools.track`` (foreground, every 20 steps)
  against the same training untracked (``benchmarks/tracking.py``'s case).
- ``dask``: runs ``benchmarks/dask_analyze.py --quick`` (serial against a 2-worker
  LocalCluster), which prints its own table.

Every row is timed in one process with one torch thread unless ``--threads`` says
otherwise; new and reference paths are called in turn (interleaved) ``--rounds`` times and
the minimum CPU and wall time kept, so a change in the machine's load reaches both alike.
The load average is printed with the table: wall times from a loaded machine are not
comparable across runs, ratios of CPU times measured together are.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from benchmarks.common import load_note, markdown_table

SECTIONS = ("crossover", "per_class", "auto", "mixture", "tracking", "dask")


def _timed(fns: dict, rounds: int, warm: bool = True) -> dict:
    """{name: (first result, min wall s, min CPU s)}, the functions called in turn, each
    called once untimed first when ``warm`` (imports, compiled kernels, thread pools)."""
    best = {name: [None, math.inf, math.inf] for name in fns}
    for fn in fns.values() if warm else ():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            out = fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            row = best[name]
            row[0] = out if row[0] is None else row[0]
            row[1], row[2] = min(row[1], wall), min(row[2], cpu)
    return best


def _row(section, case, new, ref, t, note=""):
    """A table row: the new path's and the reference's times and their CPU ratio."""
    (_, nw, nc), (_, rw, rc) = t[new], t[ref]
    return [section, case, new, f"{nc:.3f} ({nw:.3f})", ref, f"{rc:.3f} ({rw:.3f})",
            f"{nc / rc:.2f}x" if rc > 0 else "-", note]


def _gaussian_pair(n, d, seed, device):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    rho = math.sqrt(1.0 - math.exp(-2.0 / d))
    y = rho * x + math.sqrt(1 - rho * rho) * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x.to(device), y.to(device)


def crossover(args, device):
    from ibtools.estimators import KSG
    from ibtools.estimators.neighbours import choose_backend

    grid = [(3000, 2), (10_000, 2), (10_000, 3), (30_000, 3), (10_000, 5), (30_000, 5),
            (10_000, 8), (30_000, 8)]
    if args.quick:
        grid = [(3000, 2), (10_000, 5)]
    rows = []
    for n, d in grid:
        x, y = _gaussian_pair(n, d, 0, device)
        fns = {b: (lambda b=b, x=x, y=y: KSG(k=3, neighbours=b, n_permutations=0)
                   .mutual_information(x, y).value) for b in ("brute", "tree")}
        t = _timed(fns, args.rounds)
        pick = choose_backend("auto", x.device, 2 * d, n)
        diff = abs(t["brute"][0] - t["tree"][0])
        rows.append(_row("crossover", f"KSG {d}+{d} d, n={n}", "tree", "brute", t,
                         f"auto picks {pick}; abs. diff {diff:.1e}"))
    return rows


def _zipf_labels(n, classes, seed):
    p = 1.0 / torch.arange(1, classes + 1, dtype=torch.float64)
    return torch.multinomial(p / p.sum(), n, replacement=True,
                             generator=torch.Generator().manual_seed(seed))


def per_class(args, device):
    from ibtools.estimators.gaussian import class_covariances
    from ibtools.estimators.kde import pairwise_log_means
    from ibtools.estimators.kde_classes import CLASS_PASS_MAX_ROWS, class_log_means

    n, d = (5000, 32) if args.quick else (20_000, 64)
    y = _zipf_labels(n, 2000, 0)
    t = torch.randn(n, d, generator=torch.Generator().manual_seed(1)).to(device)
    ts = t[torch.argsort(y, stable=True).to(device)]
    sizes = [k for k in torch.bincount(y).tolist() if k > 0]
    starts = [0]
    for k in sizes:
        starts.append(starts[-1] + k)
    small = [(s, k) for s, k in zip(starts, sizes) if 2 <= k <= CLASS_PASS_MAX_ROWS]
    rows_small = torch.cat([torch.arange(s, s + k) for s, k in small]).to(device)
    t_small = ts[rows_small]
    x64 = ts.double()

    def old_cov():
        out = []
        for s, k in zip(starts, sizes):
            c = x64[s:s + k] - x64[s:s + k].mean(0)
            out.append(c.T @ c / max(k - 1, 1))
        return torch.stack(out)

    fns = {"one pass": lambda: class_log_means(t_small, [k for _, k in small], 0.5, 1 << 28),
           "per class": lambda: [pairwise_log_means(ts[s:s + k], 0.5, 1 << 28)
                                 for s, k in small]}
    kde_t = _timed(fns, args.rounds)
    cov_t = _timed({"one pass": lambda: class_covariances(x64, sizes, 1 << 28),
                    "per class": old_cov}, args.rounds)
    gap = float((cov_t["one pass"][0] - cov_t["per class"][0]).abs().max())
    case = f"n={n}, d={d}, {len(sizes)} classes"
    return [_row("per-class KDE", case + f" ({len(small)} packed)", "one pass", "per class",
                 kde_t),
            _row("per-class Gaussian", case, "one pass", "per class", cov_t,
                 f"max abs. cov diff {gap:.1e}")]


def auto(args, device):
    from ibtools.estimators import KSG, Auto, Gaussian

    n = 3000 if args.quick else 10_000
    x, y = _gaussian_pair(n, 3, 2, device)
    labels = (x[:, 0] > 0).long() + 2 * (y[:, 0] > 0).long()
    kw = {"n_permutations": 0}
    fns = {"auto": lambda: Auto(**kw).mutual_information(x, y).value,
           "gaussian+ksg (copula)": lambda: (
               Gaussian(transform="copula", **kw).mutual_information(x, y).value,
               KSG(transform="copula", **kw).mutual_information(x, y).value)}
    t = _timed(fns, args.rounds)
    rows = [_row("auto", f"3+3 d continuous, n={n}", "auto", "gaussian+ksg (copula)", t,
                 f"auto {t['auto'][0]:.4f}, candidates {t['gaussian+ksg (copula)'][0][0]:.4f}"
                 f" / {t['gaussian+ksg (copula)'][0][1]:.4f}")]
    fns = {"auto": lambda: Auto(**kw).mutual_information(x, labels, discrete_y=True).value,
           "ksg (Ross, copula)": lambda: KSG(transform="copula", **kw).mutual_information(
               x, labels, discrete_y=True).value}
    t = _timed(fns, args.rounds)
    rows.append(_row("auto", f"3 d vs 4 classes, n={n}", "auto", "ksg (Ross, copula)", t,
                     f"values {t['auto'][0]:.4f} / {t['ksg (Ross, copula)'][0]:.4f}"))
    return rows


def mixture(args, device):
    from ibtools.estimators.kde import KDE
    from ibtools.estimators.mixture import MixtureEntropy

    n = 2000 if args.quick else 10_000
    rows = []
    for d in ((16,) if args.quick else (64, 512)):
        t = torch.randn(n, d, generator=torch.Generator().manual_seed(d)).to(device)
        x = torch.zeros(n, 1, device=device)
        s2 = 5 * d / 64.0
        kde = KDE(noise_var=s2, deterministic=True, n_permutations=0)
        mix = MixtureEntropy(noise_var=s2, deterministic=True, mc_tolerance=0.01,
                             n_permutations=0)
        tm = _timed({"mixture": lambda mix=mix, x=x, t=t: mix.mutual_information(x, t),
                     "kde bounds": lambda kde=kde, x=x, t=t: kde.mutual_information(x, t)},
                    args.rounds)
        k, m = tm["kde bounds"][0], tm["mixture"][0]
        rows.append(_row("mixture", f"n={n}, d={d}, s2={s2:g}", "mixture", "kde bounds", tm,
                         f"{m.value:.3f} +- {m.details['mc_se']:.3f} in "
                         f"[{k.details['mi_lower']:.3f}, {k.details['mi_upper']:.3f}]"))
    return rows


def tracking(args, device):
    from benchmarks.tracking import DEFAULT_ESTIMATORS, train_once

    epochs = 3 if args.quick else 10
    kw = {"layers": "layers.*", "estimators": DEFAULT_ESTIMATORS, "every": 20,
          "max_samples": 450}
    out = {}

    def run(name, tracker):
        out[name] = train_once(epochs, 0, tracker)
        return out[name][0]

    train_once(1, 0, dict(kw, every=5))  # warm: imports, compiled kernels
    t = _timed({"tracked": lambda: run("tracked", kw), "untracked": lambda: run("untracked", None)},
               args.rounds, warm=False)
    same = all(torch.equal(a, out["untracked"][2][k]) for k, a in out["tracked"][2].items())
    return [_row("tracking", f"demo MLP, {epochs} epochs, every=20", "tracked", "untracked", t,
                 f"{out['tracked'][1]} measurements; weights identical: {same}")]


def dask(args, device):
    from benchmarks.dask_analyze import main as dask_main

    dask_main(["--quick"])
    return []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.new_paths", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections of {list(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="smaller cases")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (min kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="device of the estimator rows")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown section(s) {unknown}; use some of {list(SECTIONS)}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# New paths ({time.strftime('%Y-%m-%d %H:%M')}, torch threads {args.threads}, "
          f"device {device}, {args.rounds} interleaved rounds)\n- at start: {load_note()}\n",
          flush=True)
    rows = []
    for name in chosen:
        section = globals()[name](args, device)
        rows += section
        if not section:
            continue
        print(markdown_table(["section", "case", "path", "CPU s (wall s)", "reference",
                              "CPU s (wall s)", "path/ref CPU", "notes"], section), flush=True)
        print(f"- {load_note()}\n", flush=True)
    if len(chosen) > 1:
        print("## All rows\n")
        print(markdown_table(["section", "case", "path", "CPU s (wall s)", "reference",
                              "CPU s (wall s)", "path/ref CPU", "notes"], rows))
        print(f"- at end: {load_note()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
