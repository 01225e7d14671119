"""One benchmark run: ibtools against the references a user would otherwise pick.

    python -m benchmarks                       # everything (about 10-15 min on 2 idle cores)
    python -m benchmarks --quick               # small sizes, under 2 minutes
    python -m benchmarks --family ksg,kde      # some families only
    python -m benchmarks --device cuda         # ibtools on the GPU, references on the CPU

Families: ksg, kde, binning, gaussian, renyi, neural, analyze, scaling.  Each prints one
markdown table: for every case, ibtools' row and the reference's row on the same data, with
the median time of several runs (fewer when a run is long; the table says how many), the CPU
time, the peak memory the call added, the error against the closed-form ground truth of
docs/estimators.md, and on ibtools' row the ratios ibtools / reference.  Targets of the issue get
a PASS/FAIL line with the measured number.  The whole report, with a description of the
machine and its load, goes to ``--out`` (default benchmarks/RESULTS.md).

References: scikit-learn ``mutual_info_regression``/``mutual_info_classif`` (1-D KSG), a
scipy cKDTree KSG as NPEET does it (``benchmarks/estimators.py``), the plain-NumPy
Kolchinsky-Tracey KDE of Saxe et al. (``benchmarks/kde_reference.py``), plain-NumPy
binning (Saxe et al.'s row-unique plug-in), NumPy log-determinants, a NumPy matrix-Renyi,
and torch-mist for the neural bounds when ``.venv-mist`` exists.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import common
from benchmarks.common import fmt_mib, fmt_ratio, fmt_seconds, markdown_table, measure

FAMILIES = ("ksg", "kde", "binning", "gaussian", "renyi", "neural", "analyze", "scaling")
DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"

ROW_HEADERS = ["case", "implementation", "estimate (nats)", "error vs truth", "median s (runs)",
               "CPU s", "peak MiB added", "time ibtools/ref", "memory ibtools/ref", "notes"]


@dataclass
class Context:
    """What every family needs: sizes (quick or full), device, seed."""

    quick: bool = False
    device: str = "cpu"
    seed: int = 0
    repeats: int = 3

    def size(self, full, quick):
        return quick if self.quick else full


@dataclass
class Target:
    """One target of the issue: ``measured`` against ``limit``; ``passed`` None = not judged."""

    name: str
    limit: str
    measured: str
    passed: bool | None
    #: the verdict cell when not judged (default: the --quick reason)
    why_not_judged: str = "not judged (--quick sizes)"

    def cells(self):
        verdict = self.why_not_judged if self.passed is None else (
            "PASS" if self.passed else "FAIL")
        return [self.name, self.limit, self.measured, verdict]


@dataclass
class Section:
    title: str
    intro: list = field(default_factory=list)
    headers: list = field(default_factory=lambda: list(ROW_HEADERS))
    rows: list = field(default_factory=list)
    targets: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    extra: list = field(default_factory=list)  # further (title, headers, rows) tables

    def markdown(self) -> str:
        parts = [f"## {self.title}", ""]
        parts += [*self.intro, ""] if self.intro else []
        if self.rows:
            parts += [markdown_table(self.headers, self.rows), ""]
        for title, headers, rows in self.extra:
            parts += [f"**{title}**", "", markdown_table(headers, rows), ""]
        if self.targets:
            parts += [markdown_table(["target", "limit", "measured", "verdict"],
                                     [t.cells() for t in self.targets]), ""]
        parts += [f"- {n}" for n in self.notes]
        return "\n".join(parts).rstrip() + "\n"


# --------------------------------------------------------------------------- row helpers


def _error(value, truth) -> str:
    if truth is None or value is None:
        return "-"
    return f"{value - truth:+.4f}"


def _memory_ratio(ours, ref) -> str:
    # a few MiB is within the noise of a resident-set reading; a ratio of two such is noise
    if ours is None or ref is None or min(ours, ref) < 8:
        return "-"
    return fmt_ratio(ours, ref)


def pair_rows(case: str, truth, ours, ref, ref_name: str, our_note: str = "",
              ref_note: str = "", estimate=None, ref_estimate=None):
    """The ibtools row and the reference row of one case (``ref`` None: no reference row)."""
    def est_text(m, override):
        if override is not None:
            return override
        return "-" if m.value is None else f"{m.value:.4f}"

    rows = [[case, "ibtools", est_text(ours, estimate), _error(ours.value, truth),
             f"{fmt_seconds(ours.seconds)} ({ours.runs})", fmt_seconds(ours.cpu_seconds),
             fmt_mib(ours.added_mib),
             fmt_ratio(ours.seconds, ref.seconds) if ref else "-",
             _memory_ratio(ours.added_mib, ref.added_mib) if ref else "-", our_note]]
    if ref is not None:
        rows.append([case, ref_name, est_text(ref, ref_estimate), _error(ref.value, truth),
                     f"{fmt_seconds(ref.seconds)} ({ref.runs})", fmt_seconds(ref.cpu_seconds),
                     fmt_mib(ref.added_mib), "", "", ref_note])
    return rows


def _mi(x, y, method, ctx, **settings):
    import ibtools

    return ibtools.mutual_information(x, y, method=method, seed=ctx.seed, device=ctx.device,
                                      **settings)


# --------------------------------------------------------------------------- KSG


def family_ksg(ctx: Context) -> Section:
    import numpy as np
    from sklearn.feature_selection import mutual_info_classif, mutual_info_regression

    from benchmarks.estimators import gaussian_data, reference_ksg

    sec = Section("KSG (k = 3, max-norm)", intro=[
        "Gaussian X, Y with d coordinates each, I = 1 nat (docs/estimators.md case 1); "
        "binary Y with T = Y + U(0, 2), I = ln(2)/2 (case 6).  The cKDTree reference gets "
        "the exact geometry ibtools builds (float32, scaled, the same seeded 1e-10 noise), so "
        "the two must agree to 1e-3 nats; scikit-learn adds its own noise."])
    n1 = ctx.size(10_000, 2_000)
    x, y, truth = gaussian_data(n1, 1, ctx.seed)
    ours = measure(lambda: _mi(x, y, "ksg", ctx).value, repeats=ctx.repeats)
    ref = measure(lambda: float(mutual_info_regression(
        x, y[:, 0], n_neighbors=3, random_state=ctx.seed)[0]), repeats=ctx.repeats)
    sec.rows += pair_rows(f"1+1 d, n={n1}", truth, ours, ref, "sklearn mutual_info_regression")

    rng = np.random.default_rng(ctx.seed)
    labels = rng.integers(0, 2, n1)
    t = (labels + rng.uniform(0, 2.0, n1)).reshape(-1, 1)
    ours = measure(lambda: _mi(t, labels, "ksg", ctx).value, repeats=ctx.repeats)
    ref = measure(lambda: float(mutual_info_classif(
        t, labels, discrete_features=False, n_neighbors=3, random_state=ctx.seed)[0]),
        repeats=ctx.repeats)
    sec.rows += pair_rows(f"1 d vs 2 classes, n={n1}", math.log(2) / 2, ours, ref,
                          "sklearn mutual_info_classif")

    n = ctx.size(100_000, 10_000)
    x, y, truth = gaussian_data(n, 5, ctx.seed)
    # the warm-up is as large as the size from which the numba tree is used, so a first
    # compilation (when its on-disk cache is cold) is not timed
    from ibtools.estimators.neighbours import NUMBA_MIN_N

    warm = gaussian_data(min(n, NUMBA_MIN_N), 5, ctx.seed + 1)
    ours = measure(lambda: _mi(x, y, "ksg", ctx), repeats=ctx.repeats, budget_s=40,
                   warmup=lambda: _mi(warm[0], warm[1], "ksg", ctx), device=ctx.device)
    r = ours.value
    ours.value = r.value
    ref = measure(lambda: reference_ksg(x, y, seed=ctx.seed), repeats=ctx.repeats, budget_s=0,
                  warmup=lambda: reference_ksg(warm[0], warm[1], seed=ctx.seed))
    diff = abs(ours.value - ref.value)
    engine = f" ({r.details['tree_engine']})" if "tree_engine" in r.details else ""
    sec.rows += pair_rows(f"5+5 d, n={n}", truth, ours, ref, "cKDTree KSG (NPEET-style)",
                          our_note=f"backend {r.details.get('backend')}{engine}; "
                                   f"abs. diff {diff:.1e}")
    judged = None if ctx.quick else True
    speedup = ref.seconds / ours.seconds
    cpu_speedup = ref.cpu_seconds / max(ours.cpu_seconds, 1e-9)
    sec.targets += [
        Target(f"KSG n={n}, 5+5 d: time", "< 30 s", f"{ours.seconds:.1f} s",
               judged and ours.seconds < 30),
        Target("KSG vs tree reference: speed-up", ">= 5x",
               f"{speedup:.1f}x wall ({cpu_speedup:.1f}x CPU time)", judged and speedup >= 5),
        Target("KSG vs tree reference: agreement", "<= 1e-3 nats", f"{diff:.1e} nats",
               diff <= 1e-3),
    ]
    return sec


# --------------------------------------------------------------------------- KDE


def family_kde(ctx: Context) -> Section:
    import numpy as np

    from benchmarks import kde_reference as ref_kde
    from ibtools.estimators.kde import KDE

    s2 = 1.0
    sec = Section("KDE pairwise-distance bounds (Kolchinsky & Tracey)", intro=[
        f"I(X; T+Z) of T ~ N(0, I_d) with Z ~ N(0, {s2:g} I), both bounds (KL upper, "
        "Bhattacharyya lower).  The value is a bound on a noisy mixture's entropy, with no "
        "closed form; the check is agreement with the float64 NumPy reference (full n x n "
        "matrix, or blocks of 2000 rows when that matrix would pass 1 GB)."])
    cases = [(ctx.size(20_000, 5_000), 20)] + ([] if ctx.quick else [(5_000, 100)])
    for n, d in cases:
        t = np.random.default_rng(n * 1000 + d).normal(size=(n, d)).astype(np.float32)
        x0 = np.zeros((n, 1), dtype=np.float32)
        est = KDE(noise_var=s2, seed=ctx.seed, device=ctx.device, deterministic=True)
        block = 2000 if 8.0 * n * n > 1e9 else None

        def ours_fn():
            r = est.mutual_information(x0, t)
            return r.details["mi_lower"], r.details["mi_upper"]

        def ref_fn():
            return (ref_kde.mi_deterministic(t, s2, "lower", block),
                    ref_kde.mi_deterministic(t, s2, "upper", block))

        ours = measure(ours_fn, repeats=ctx.repeats,
                       warmup=lambda: est.mutual_information(x0[:200], t[:200]),
                       device=ctx.device)
        ref = measure(ref_fn, repeats=ctx.repeats, budget_s=15,
                      warmup=lambda: ref_kde.mi_deterministic(t[:200], s2))
        (lo, up), (rlo, rup) = ours.value, ref.value
        diff = max(abs(lo - rlo), abs(up - rup))
        ours.value = ref.value = None
        sec.rows += pair_rows(f"n={n}, d={d}", None, ours, ref, "NumPy KDE (Saxe et al.)",
                              our_note=f"max abs. diff {diff:.1e}",
                              ref_note="" if block is None else f"blocks of {block} rows",
                              estimate=f"{lo:.4f} .. {up:.4f}",
                              ref_estimate=f"{rlo:.4f} .. {rup:.4f}")
        if (n, d) == cases[0]:
            judged = None if ctx.quick else True
            sec.targets += [
                Target(f"KDE n={n}, d={d}: time", "< 5 s", f"{ours.seconds:.2f} s",
                       judged and ours.seconds < 5),
                Target("KDE vs NumPy reference: speed-up", ">= 4x",
                       f"{ref.seconds / ours.seconds:.1f}x",
                       judged and ref.seconds / ours.seconds >= 4),
                Target("KDE vs NumPy reference: agreement", "<= 1e-3 nats", f"{diff:.1e}",
                       diff <= 1e-3)]
    return sec


# --------------------------------------------------------------------------- binning


def numpy_binning_mi(t, labels, n_bins: int = 30) -> float:
    """Plug-in I(T;Y) the way Saxe et al.'s code does it: one bin grid over the layer's
    range, each row's bin ids viewed as one byte string, ``np.unique`` for the counts."""
    import numpy as np

    lo, hi = float(t.min()), float(t.max())
    ids = np.clip(((t - lo) / (hi - lo) * n_bins).astype(np.int64), 0, n_bins - 1)
    ids = np.ascontiguousarray(ids.astype(np.uint8))
    keys = ids.view(np.dtype((np.void, ids.shape[1]))).ravel()

    def h(k):
        _, counts = np.unique(k, return_counts=True)
        p = counts / counts.sum()
        return float(-(p * np.log(p)).sum())

    cond = 0.0
    for c in np.unique(labels):
        mask = labels == c
        cond += mask.mean() * h(keys[mask])
    return h(keys) - cond


def family_binning(ctx: Context) -> Section:
    import numpy as np

    flip = 0.1
    truth = math.log(2) + flip * math.log(flip) + (1 - flip) * math.log(1 - flip)
    sec = Section("Binning (30 bins per unit, plug-in)", intro=[
        "T: a 64-d embedding of X uniform on 256 symbols (a deterministic layer); Y = the "
        f"low bit of X sent through a binary symmetric channel with flip {flip}, so "
        f"I(T;Y) = ln 2 - H_b({flip}) = {truth:.4f} nats (docs/estimators.md case 5) when the bins "
        "keep the 256 symbols apart."])
    n, d = ctx.size(1_000_000, 100_000), 64
    rng = np.random.default_rng(ctx.seed)
    sym = rng.integers(0, 256, n)
    t = rng.normal(size=(256, d)).astype(np.float32)[sym]
    y = (sym & 1) ^ (rng.random(n) < flip)
    ours = measure(lambda: _mi(t, y, "binning", ctx, n_bins=30).value, repeats=ctx.repeats,
                   warmup=lambda: _mi(t[:1000], y[:1000], "binning", ctx), device=ctx.device)
    ref = measure(lambda: numpy_binning_mi(t, y, 30), repeats=ctx.repeats, budget_s=15)
    sec.rows += pair_rows(f"n={n}, d={d}", truth, ours, ref, "NumPy np.unique rows (Saxe et al.)")
    sec.targets.append(Target(f"Binning n={n}, d={d}: time", "< 3 s", f"{ours.seconds:.2f} s",
                              None if ctx.quick else ours.seconds < 3))
    return sec


# --------------------------------------------------------------------------- Gaussian


def numpy_gaussian_mi(x, y) -> float:
    """1/2 ln(det S_xx det S_yy / det S) with ``np.cov`` and ``slogdet``: what one writes
    by hand."""
    import numpy as np

    dx = x.shape[1]
    s = np.cov(np.hstack([x, y]), rowvar=False)
    return 0.5 * (np.linalg.slogdet(s[:dx, :dx])[1] + np.linalg.slogdet(s[dx:, dx:])[1]
                  - np.linalg.slogdet(s)[1])


def family_gaussian(ctx: Context) -> Section:
    from benchmarks.estimators import gaussian_data

    sec = Section("Gaussian (log-determinant closed form)", intro=[
        "Gaussian X, Y with d coordinates each, I = 1 nat (case 1); the reference is "
        "np.cov + np.linalg.slogdet in float64."])
    for n, d in [(ctx.size(100_000, 20_000), 32), (ctx.size(1_000_000, 100_000), 8)]:
        x, y, truth = gaussian_data(n, d, ctx.seed)
        ours = measure(lambda: _mi(x, y, "gaussian", ctx).value, repeats=ctx.repeats,
                       warmup=lambda: _mi(x[:500], y[:500], "gaussian", ctx), device=ctx.device)
        ref = measure(lambda: numpy_gaussian_mi(x, y), repeats=ctx.repeats)
        sec.rows += pair_rows(f"{d}+{d} d, n={n}", truth, ours, ref, "NumPy slogdet")
    return sec


# --------------------------------------------------------------------------- matrix Renyi


def numpy_renyi_mi(x, y, sigma: float, alpha: float) -> float:
    """Matrix-based Renyi MI (Giraldo et al. 2015) in plain NumPy: Gaussian Gram matrices,
    trace-normalised, S(A) + S(B) - S(A o B / tr(A o B)) from ``eigvalsh``."""
    import numpy as np

    def gram(v):
        v = v.astype(np.float64)
        sq = (v * v).sum(1)
        dist = np.maximum(sq[:, None] + sq[None, :] - 2 * v @ v.T, 0)
        k = np.exp(-dist / (2 * sigma**2))
        return k / np.trace(k)

    def s(a):
        lam = np.linalg.eigvalsh(a)
        lam = lam[lam > lam.max() * len(lam) * np.finfo(float).eps]
        return float(np.log((lam**alpha).sum()) / (1 - alpha))

    a, b = gram(x), gram(y)
    ab = a * b
    return s(a) + s(b) - s(ab / np.trace(ab))


def family_renyi(ctx: Context) -> Section:
    import numpy as np

    from benchmarks.estimators import gaussian_data

    alpha = 1.01
    sec = Section("Matrix-based Renyi alpha-entropy", intro=[
        f"Gaussian X, Y (3+3 d, Shannon I = 1 nat), alpha = {alpha}, the same fixed kernel "
        "width on both sides.  The matrix-Renyi MI is its own quantity (not Shannon MI), so "
        "the check is agreement with a plain-NumPy eigvalsh implementation; O(m^3) in the "
        "rows used."])
    for n in [ctx.size(1000, 300), ctx.size(2000, 500)]:
        x, y, _ = gaussian_data(n, 3, ctx.seed)
        x, y = x.astype(np.float32), y.astype(np.float32)
        sigma = math.sqrt(3.0)
        ours = measure(lambda: _mi(x, y, "renyi", ctx, sigma=sigma, alpha=alpha,
                                   max_samples=n).value, repeats=ctx.repeats, device=ctx.device)
        ref = measure(lambda: numpy_renyi_mi(x, y, sigma, alpha), repeats=ctx.repeats)
        sec.rows += pair_rows(f"m={n}", None, ours, ref, "NumPy eigvalsh",
                              our_note=f"abs. diff {abs(ours.value - ref.value):.1e}")
    return sec


# --------------------------------------------------------------------------- families run elsewhere


_MIST_WRAPPER = r"""
import json, sys, time
import numpy, torch, torch_mist  # imports before the measurement
from benchmarks.common import PeakMemory
from benchmarks.neural import run_mist_worker
cpu = time.process_time()
with PeakMemory() as mem:
    run_mist_worker(sys.argv[1], sys.argv[2])
print(json.dumps({"added_mib": mem.added_mib, "cpu_seconds": time.process_time() - cpu}))
"""


def _mist_rows(x, y, cfg, methods) -> tuple[dict, str | None]:
    """torch-mist's value, time and memory per method, each in its own .venv-mist process."""
    import json
    import os
    import subprocess
    import tempfile

    import numpy as np

    from benchmarks.neural import DEFAULT_MIST_PYTHON

    if not DEFAULT_MIST_PYTHON.exists():
        return {}, f"torch-mist rows: not installed ({DEFAULT_MIST_PYTHON} not found; see " \
                   "benchmarks/requirements-torch-mist.txt)"
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npz")
        np.savez(path, x=x, y=y)
        for method in methods:
            proc = subprocess.run(
                [str(DEFAULT_MIST_PYTHON), "-c", _MIST_WRAPPER, path,
                 json.dumps(dict(cfg, methods=[method]))],
                capture_output=True, text=True, cwd=str(Path(__file__).resolve().parents[1]))
            recs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or len(recs) < 2:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                return out, f"torch-mist {method} failed: {tail}"
            out[method] = {**recs[0], **recs[1]}
    return out, None


def family_neural(ctx: Context) -> Section:
    from benchmarks.neural import IBTOOLS_METHODS, MIST_METHODS, run_ibtools, staircase_data

    level, dim = 2.0, 10
    n, steps = ctx.size(10_000, 4_000), ctx.size(200, 30)
    cfg = {"critic": "separable", "hidden": 128, "embed_dim": 32, "batch_size": 256,
           "steps": steps, "lr": 5e-4, "val_fraction": 0.2, "seed": ctx.seed,
           "device": None if ctx.device == "cpu" else ctx.device}
    sec = Section("Neural variational bounds (MINE, NWJ, InfoNCE, SMILE)", intro=[
        f"Gaussian X, Y with {dim} coordinates each and I = {level:g} nats, n = {n} (80 % "
        f"train, 20 % held out), separable critic (128, 128) -> 32, batch 256, exactly "
        f"{steps} steps on both sides (no early stopping).  One run each (training is the "
        "cost; its randomness is in the value).  torch-mist runs in its own virtualenv "
        "(numpy < 2), so its memory is measured in that process."])
    x, y = staircase_data(n, dim, level, ctx.seed)
    ours = {}
    for method in IBTOOLS_METHODS:
        cpu = time.process_time()
        with common.PeakMemory(cuda=ctx.device.startswith("cuda")) as mem:
            rec = run_ibtools(method, x, y, cfg)
        ours[method] = common.Measurement(rec["value"], [rec["seconds"]],
                                          [time.process_time() - cpu], mem.added_mib)
    mist, note = _mist_rows(x, y, cfg, MIST_METHODS)
    if note:
        sec.notes.append(note)
    for method, m in ours.items():
        ref = None
        if method in mist:
            r = mist[method]
            ref = common.Measurement(r["value"], [r["seconds"]], [r["cpu_seconds"]],
                                     r["added_mib"])
        sec.rows += pair_rows(method, level, m, ref, f"torch-mist {method}",
                              our_note=f"{1000 * m.seconds / steps:.1f} ms/step",
                              ref_note="" if ref is None else
                              f"{1000 * ref.seconds / steps:.1f} ms/step")
    return sec


def family_analyze(ctx: Context) -> Section:
    from benchmarks.analyze_gpt import DEFAULT_ESTIMATORS, GPT_CONFIG, time_analysis

    tokens = ctx.size(8192, 1024)
    with common.PeakMemory() as mem:
        r = time_analysis(tokens, DEFAULT_ESTIMATORS, ctx.device, ctx.seed)
    sec = Section("Analysis end to end (tiny GPT)", intro=[
        f"ibtools.analyze on a saved 12-layer GPT ({GPT_CONFIG}), data='text' (the inspect "
        f"module's source), layers 'blocks' (the 12 block outputs), reference='previous', settings "
        f"{', '.join(DEFAULT_ESTIMATORS)}: checkpoint load, capture and every estimate "
        "(I(T;Y), I(X;T), I(T_prev;T) per layer and setting)."],
        headers=["layers", "settings", "tokens", "dim", "results rows", "seconds",
                 "of which estimators", "peak MiB added"],
        rows=[[r["layers"], r["settings"], r["tokens"], r["dim"], r["rows"],
               f"{r['seconds']:.1f}", f"{r['estimate_seconds']:.1f}", fmt_mib(mem.added_mib)]])
    sec.targets.append(Target(f"analyze 12-layer GPT, {tokens} tokens, 3 settings", "< 60 s",
                              f"{r['seconds']:.1f} s",
                              None if ctx.quick else r["seconds"] < 60))
    return sec


def family_scaling(ctx: Context) -> Section:
    from benchmarks import scaling

    return scaling.section(ctx)


RUNNERS = {"ksg": family_ksg, "kde": family_kde, "binning": family_binning,
           "gaussian": family_gaussian, "renyi": family_renyi, "neural": family_neural,
           "analyze": family_analyze, "scaling": family_scaling}


# --------------------------------------------------------------------------- driver


def parse_families(text: str) -> list[str]:
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in FAMILIES]
    if bad or not names:
        raise SystemExit(f"--family {text!r}: unknown {bad}; use a comma-separated subset of "
                         f"{','.join(FAMILIES)}")
    return names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (under 2 minutes)")
    p.add_argument("--family", default=",".join(FAMILIES),
                   help=f"comma-separated subset of {','.join(FAMILIES)}")
    p.add_argument("--device", default="cpu", help="where ibtools computes (cpu, cuda)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="most timed runs per row")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report path")
    args = p.parse_args(argv)
    families = parse_families(args.family)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: torch sees no CUDA device")
    ctx = Context(quick=args.quick, device=args.device, seed=args.seed, repeats=args.repeats)

    header = ["# ibtools benchmark results", "",
              f"`python -m benchmarks {' '.join(argv if argv is not None else sys.argv[1:])}`"
              f" on {time.strftime('%Y-%m-%d %H:%M')}; ibtools device `{args.device}` "
              "(references always on the CPU).", "",
              *[f"- {line}" for line in common.machine_description(args.device)],
              f"- at start: {common.load_note()}", ""]
    print("\n".join(header), flush=True)
    sections, targets = [], []
    start = time.perf_counter()
    for name in families:
        t0 = time.perf_counter()
        try:
            sec = RUNNERS[name](ctx)
        except Exception as exc:  # one broken family must not lose the others' numbers
            sec = Section(name, notes=[f"failed: {type(exc).__name__}: {exc}"])
        sec.notes.append(f"family time {time.perf_counter() - t0:.0f} s; {common.load_note()}")
        print(sec.markdown(), flush=True)
        sections.append(sec)
        targets += sec.targets
    summary = ["## Targets", "", markdown_table(["target", "limit", "measured", "verdict"],
                                                [t.cells() for t in targets]) if targets else
               "(no target in the chosen families)", "",
               f"Total run time {time.perf_counter() - start:.0f} s; at the end: "
               f"{common.load_note()}.", ""]
    print("\n".join(summary))
    report = "\n".join(header) + "\n" + "\n".join(s.markdown() for s in sections) + "\n" + \
        "\n".join(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"written to {args.out}")
    return 0 if all(t.passed is not False for t in targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
