"""Gaussian staircase for the neural MI bounds, against torch-mist on the same data.

For each true MI level (default 2, 4, 6, 8, 10 nats) and each seed it draws x, y in R^20
with equal per-coordinate correlation (I = -d/2 ln(1 - rho^2)), n = 20 000 rows, and runs
ibtools' MINE, NWJ, InfoNCE and SMILE and, when available, torch-mist's MINE and SMILE with
the same critic shape, batch size, number of steps and learning rate.  It prints markdown
tables: per estimator and level the mean value over seeds, its spread, the error of the
mean and the mean absolute error, the time per step; then ibtools against torch-mist row
by row.  InfoNCE's ln(batch) ceiling and SMILE's clipping bias show in the errors; they are
part of the result, not hidden.

Method specs take settings after a colon, for both libraries: ``smile:tau=10``,
``mine:ema=0.99``.  The "exact critic" rows read each ibtools method's bound off the true
log density ratio with ibtools' own held-out evaluation: what the estimator converges to
with a perfect critic, so a row's error splits into the bound's own bias (that row) and the
training shortfall (the rest).

Both libraries train for exactly ``--steps`` steps (no early stopping: ibtools keeps the
critic with the best trailing mean of its held-out evaluations, torch-mist its final
critic) and report on held-out rows: torch-mist on the 20 % chosen by :func:`split`,
ibtools on a 20 % it draws itself from the same seed.  ibtools uses its defaults otherwise
(cosine learning-rate decay, encoders with a linear shortcut, MINE without the
moving-average correction); torch-mist uses its own defaults with the same critic widths,
batch size, steps and learning rate, and all other rows of a batch as negatives.

torch-mist (PyPI ``torch-mist``) pins numpy < 2, so it lives in its own virtualenv and
runs in a subprocess; see benchmarks/requirements-torch-mist.txt for the setup:

    python -m venv .venv-mist
    .venv-mist/bin/pip install torch==2.13.0
    .venv-mist/bin/pip install -c benchmarks/requirements-torch-mist.txt \
        -r benchmarks/requirements-torch-mist.txt
    .venv-mist/bin/pip install --no-deps -e .

Usage::

    python benchmarks/neural.py                      # full size, one seed (slow on a CPU)
    python benchmarks/neural.py --levels 2 4 6 --steps 1000 --hidden 128 --out out/neural.md
    python benchmarks/neural.py --device cuda --seeds 0 1 2   # on a GPU
    # split the seeds over processes, then build the tables from their records:
    python benchmarks/neural.py --seeds 0 --records a.jsonl &
    python benchmarks/neural.py --seeds 1 --records b.jsonl &
    wait; python benchmarks/neural.py --merge a.jsonl b.jsonl --out benchmarks/NEURAL.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: The torch-mist virtualenv's interpreter: $IBTOOLS_MIST_PYTHON, else .venv-mist in the repo.
DEFAULT_MIST_PYTHON = Path(os.environ.get("IBTOOLS_MIST_PYTHON")
                           or REPO / ".venv-mist" / "bin" / "python")
IBTOOLS_METHODS = ("mine", "mine:ema=0.99", "nwj", "infonce", "smile", "smile:tau=10")
MIST_METHODS = ("mine", "smile", "smile:tau=10")
#: torch-mist settings a spec may carry, per estimator.
MIST_SETTINGS = {"mine": (), "smile": ("tau",)}


def staircase_data(n: int, d: int, mi: float, seed: int):
    """x, y in R^d, per-coordinate correlation rho with -d/2 ln(1 - rho^2) = mi."""
    rho = math.sqrt(1.0 - math.exp(-2.0 * mi / d))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (rho * x + math.sqrt(1.0 - rho**2) * rng.standard_normal((n, d))).astype(np.float32)
    return x, y


def split(n: int, val_fraction: float, seed: int):
    perm = np.random.default_rng(seed + 1).permutation(n)
    n_val = int(round(val_fraction * n))
    return perm[n_val:], perm[:n_val]


def parse_method(text: str):
    """``"mine"`` or ``"smile:tau=10"`` -> (method, settings), by ibtools' own spec parser
    (the torch-mist virtualenv has ibtools installed too)."""
    from ibtools.estimators.spec import parse_estimator_spec

    spec = parse_estimator_spec(text)
    return spec.method, dict(spec.settings)


def run_ibtools(spec, x, y, cfg, seed=None):
    import torch

    import ibtools

    method, settings = parse_method(spec)
    seed = cfg.get("seed", 0) if seed is None else seed
    start = time.perf_counter()
    r = ibtools.mutual_information(
        x, y, method=method, **settings, critic=cfg["critic"], hidden=(cfg["hidden"],) * 2,
        embed_dim=cfg["embed_dim"], batch_size=cfg["batch_size"], steps=cfg["steps"],
        lr=cfg["lr"], val_fraction=cfg["val_fraction"], patience=None, seed=seed,
        device=cfg["device"], progress=False)
    if r.details["device"].startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"value": r.value, "seconds": seconds, "steps": r.details["steps_run"],
            "flags": [f.split(":")[0] for f in r.flags]}


class ExactCritic:
    """The optimal critic of :func:`staircase_data`, f = ln p(x, y) / (p(x) p(y)) + shift
    (NWJ's optimum is shifted by 1), as a (rows of x, rows of y) score matrix."""

    def __init__(self, d: int, mi: float, shift: float = 0.0):
        self.d, self.shift = d, shift
        self.rho = math.sqrt(1.0 - math.exp(-2.0 * mi / d))

    def __call__(self, x, y):
        r, r2 = self.rho, self.rho**2
        x, y = x.double(), y.double()
        quad = (r2 * (x**2).sum(1)[:, None] - 2 * r * x @ y.T
                + r2 * (y**2).sum(1)[None, :]) / (2 * (1 - r2))
        return -0.5 * self.d * math.log(1 - r2) - quad + self.shift


def exact_critic_values(specs, x, y, level, cfg, seed):
    """Each bound read off the exact critic with ibtools' held-out evaluation (the same
    ~2 000 negatives per row, InfoNCE per batch, SMILE's clip), on the held-out rows of
    :func:`split`.  Specs that differ only in training settings (MINE's ``ema``) share a
    reading; the key is the spec without them."""
    import torch

    from ibtools.estimators import get_estimator

    _, test = split(len(x), cfg["val_fraction"], seed)
    b = cfg["batch_size"]
    batches = torch.as_tensor(test[: (len(test) // b) * b]).view(-1, b)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    out = {}
    for spec in specs:
        method, settings = parse_method(spec)
        settings.pop("ema", None)  # a training setting: the reading is the same
        label = exact_label(spec)
        if label in out:
            continue
        est = get_estimator(method, batch_size=b, critic="separable", **settings)
        key = est.bound_type.key
        critic = ExactCritic(x.shape[1], level, shift=1.0 if key == "nwj" else 0.0)
        tau = float(est.tau) if key == "smile" else None
        value, _, _ = est._evaluate(critic, xt, yt, est._groups(batches), b, tau)
        out[label] = value
    return out


def exact_label(spec: str) -> str:
    method, settings = parse_method(spec)
    settings.pop("ema", None)
    return method + "".join(
        f":{k}={v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool)
        else f":{k}={v}" for k, v in sorted(settings.items()))


def run_mist_worker(data_path: str, cfg_json: str) -> None:
    """Runs inside the torch-mist virtualenv; prints one JSON line per method."""
    import torch
    from torch_mist import estimate_mi

    cfg = json.loads(cfg_json)
    data = np.load(data_path)
    x, y = data["x"], data["y"]
    train, test = split(len(x), cfg["val_fraction"], cfg["seed"])
    device = cfg["device"] or "cpu"
    for spec in cfg["methods"]:
        method, settings = parse_method(spec)
        torch.manual_seed(cfg["seed"])
        start = time.perf_counter()
        value = estimate_mi(
            data=(torch.from_numpy(x[train]), torch.from_numpy(y[train])),
            test_data=(torch.from_numpy(x[test]), torch.from_numpy(y[test])),
            estimator=method, critic_type=cfg["critic"], hidden_dims=[cfg["hidden"]] * 2,
            k_dim=cfg["embed_dim"] if cfg["critic"] == "separable" else None,
            neg_samples=-1,  # all other rows of the batch, as ibtools uses
            batch_size=cfg["batch_size"], max_iterations=cfg["steps"],
            optimizer_params={"lr": cfg["lr"]}, early_stopping=False, verbose=False,
            logger=False, device=device, **settings)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(json.dumps({"method": spec, "value": float(value), "seconds": seconds,
                          "steps": cfg["steps"]}), flush=True)


def run_mist(x, y, cfg, seed, mist_python: Path):
    if not mist_python.exists():
        return None, f"torch-mist skipped: {mist_python} not found (see the module docstring)"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npz")
        np.savez(path, x=x, y=y)
        mist_cfg = dict(cfg, methods=list(cfg["mist_methods"]), seed=seed)
        proc = subprocess.run([str(mist_python), __file__, "--mist-worker", path,
                               json.dumps(mist_cfg)], capture_output=True, text=True)
    if proc.returncode != 0:
        return None, f"torch-mist failed: {proc.stderr.strip().splitlines()[-1:]}"
    rows = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            rows[rec["method"]] = rec
    return rows, None


# -- torch-mist at its own defaults -------------------------------------------------------

#: The matched configuration of ``benchmarks/run.py``'s neural family, for both libraries:
#: separable critic (128, 128) -> 32, batch 256, 200 steps, lr 5e-4, no early stopping, all
#: other rows of a batch as negatives.
MATCHED = {"critic": "separable", "hidden": 128, "embed_dim": 32, "batch_size": 256,
           "steps": 200, "lr": 5e-4, "val_fraction": 0.2, "device": None}
DEFAULTS_METHODS = ("mine", "infonce")


def _counting_adam():
    """``torch.optim.Adam`` that counts its steps (torch-mist stops early by default, so its
    number of training steps is only known afterwards); the updates are Adam's own."""
    import torch

    class CountingAdam(torch.optim.Adam):
        steps = 0

        def step(self, closure=None):
            type(self).steps += 1
            return super().step(closure)

    return CountingAdam


def run_mist_defaults(method, x, y, seed, val_fraction=0.2):
    """torch-mist's ``estimate_mi`` with nothing but the data, the held-out rows and the
    estimator name: its own critic, widths, negatives, batch size, learning rate, number of
    iterations and early stopping (on 10 % of the training rows)."""
    import torch
    from torch_mist import estimate_mi

    train, test = split(len(x), val_fraction, seed)
    adam = _counting_adam()
    torch.manual_seed(seed)
    start, cpu = time.perf_counter(), time.process_time()
    value = estimate_mi(data=(torch.from_numpy(x[train]), torch.from_numpy(y[train])),
                        test_data=(torch.from_numpy(x[test]), torch.from_numpy(y[test])),
                        estimator=method, optimizer_class=adam, verbose=False, logger=False)
    return {"value": float(value), "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu, "steps": adam.steps}


def run_mist_matched(method, x, y, seed, cfg=MATCHED):
    """torch-mist in the matched configuration (see :data:`MATCHED`)."""
    import torch
    from torch_mist import estimate_mi

    train, test = split(len(x), cfg["val_fraction"], seed)
    adam = _counting_adam()
    torch.manual_seed(seed)
    start, cpu = time.perf_counter(), time.process_time()
    value = estimate_mi(
        data=(torch.from_numpy(x[train]), torch.from_numpy(y[train])),
        test_data=(torch.from_numpy(x[test]), torch.from_numpy(y[test])),
        estimator=method, critic_type=cfg["critic"], hidden_dims=[cfg["hidden"]] * 2,
        k_dim=cfg["embed_dim"], neg_samples=-1, batch_size=cfg["batch_size"],
        max_iterations=cfg["steps"], optimizer_class=adam, optimizer_params={"lr": cfg["lr"]},
        early_stopping=False, verbose=False, logger=False)
    return {"value": float(value), "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu, "steps": adam.steps}


def run_ibtools_timed(method, x, y, seed, cfg=None):
    """ibtools at its defaults (``cfg`` None: only the data, the seed and no progress bar)
    or in a given configuration; value, wall and CPU seconds, training steps run."""
    import ibtools

    start, cpu = time.perf_counter(), time.process_time()
    if cfg is None:
        r = ibtools.mutual_information(x, y, method=method, seed=seed, progress=False)
        rec = {"value": r.value, "steps": r.details["steps_run"]}
    else:
        rec = run_ibtools(method, x, y, cfg, seed)
    return {"value": float(rec["value"]), "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu, "steps": int(rec["steps"])}


def defaults_comparison(seeds, level=2.0, dim=10, n=10_000, methods=DEFAULTS_METHODS,
                        log=None) -> list:
    """ibtools and torch-mist, each at its own defaults and both in :data:`MATCHED`, on the
    same data per seed, in one process, interleaved (every implementation once per seed, in
    turn, so the machine's load reaches all alike).  Needs torch-mist importable here."""
    runs = {
        "ibtools, its defaults": lambda m, x, y, s: run_ibtools_timed(m, x, y, s),
        "torch-mist, its defaults": run_mist_defaults,
        "ibtools, matched": lambda m, x, y, s: run_ibtools_timed(m, x, y, s, MATCHED),
        "torch-mist, matched": run_mist_matched,
    }
    records = []
    for seed in seeds:
        x, y = staircase_data(n, dim, level, seed)
        for method in methods:
            for config, run in runs.items():
                rec = {"seed": seed, "level": level, "method": method, "config": config,
                       **run(method, x, y, seed)}
                records.append(rec)
                if log is not None:
                    print(json.dumps(rec), file=log, flush=True)
    return records


def render_defaults(records, setup: str) -> str:
    """One row per (method, configuration): mean value and error vs truth over the seeds,
    steps, wall and CPU seconds per run, ms per step (wall and CPU)."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["method"], r["config"]), []).append(r)
    lines = [setup, "",
             ("| method | implementation, configuration | seeds | mean value | error vs truth | "
              "per-seed errors | steps (mean) | wall s / run | CPU s / run | ms / step wall | "
              "ms / step CPU |"),
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for (method, config), recs in groups.items():
        level = recs[0]["level"]
        mean = statistics.fmean(r["value"] for r in recs)
        steps = statistics.fmean(r["steps"] for r in recs)
        wall = statistics.fmean(r["seconds"] for r in recs)
        cpu = statistics.fmean(r["cpu_seconds"] for r in recs)
        per_step = statistics.median(1000 * r["seconds"] / r["steps"] for r in recs)
        per_step_cpu = statistics.median(1000 * r["cpu_seconds"] / r["steps"] for r in recs)
        errors = " ".join(_pct((r["value"] - level) / level) for r in recs)
        lines.append(f"| {method} | {config} | {len(recs)} | {mean:.3f} | "
                     f"{_pct((mean - level) / level)} | {errors} | {steps:.0f} | {wall:.1f} | "
                     f"{cpu:.1f} | {per_step:.1f} | {per_step_cpu:.1f} |")
    return "\n".join(lines) + "\n"


def defaults_main(args) -> int:
    """``--defaults``: run :func:`defaults_comparison` here if torch-mist imports, else
    re-run this command under the torch-mist interpreter (ibtools is installed there too)."""
    if args.merge:  # tables from earlier --defaults --records files; runs nothing
        records = [json.loads(line) for path in args.merge
                   for line in path.read_text().splitlines() if '"config"' in line]
        table = render_defaults(records, "Records of: " + ", ".join(map(str, args.merge)))
        print(table)
        if args.out:
            args.out.write_text(table)
        return 0
    try:
        import torch_mist
    except ImportError:
        if not args.mist_python.exists():
            print(f"torch-mist is not importable here and {args.mist_python} does not exist; "
                  f"create the virtualenv (benchmarks/README.md) or pass --mist-python",
                  file=sys.stderr)
            return 2
        cmd = [str(args.mist_python), "-m", "benchmarks.neural", *sys.argv[1:]]
        return subprocess.run(cmd, check=False, cwd=str(REPO)).returncode
    import torch
    import torch_mist

    load = os.getloadavg()
    sink = args.records.open("a") if args.records else sys.stderr
    records = defaults_comparison(args.seeds, log=sink)
    if args.records:
        sink.close()
    setup = (f"Gaussian X, Y with 10 coordinates each, I = 2 nats, n = 10000 (20 % held out); "
             f"seeds {', '.join(map(str, args.seeds))}; one process (torch {torch.__version__}, "
             f"torch-mist {getattr(torch_mist, '__version__', '?')}), "
             f"{torch.get_num_threads()} intra-op thread(s), implementations interleaved per "
             f"seed; load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
             f"end (2 cores).")
    table = render_defaults(records, setup)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 0


# -- tables -------------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def summarize(records):
    """Group raw records by (level, estimator): mean value, spread, errors, times, flags."""
    groups: dict = {}
    for rec in records:
        groups.setdefault((rec["level"], rec["estimator"]), []).append(rec)
    rows = []
    for (level, name), recs in groups.items():
        values = [r["value"] for r in recs]
        errors = [(v - level) / level for v in values]
        mean = statistics.fmean(values)
        timed = [r for r in recs if "seconds" in r]
        flags: dict = {}
        for r in recs:
            for f in r.get("flags", []):
                flags[f] = flags.get(f, 0) + 1
        rows.append({
            "level": level, "estimator": name, "seeds": len(recs), "mean": mean,
            "sd": statistics.stdev(values) if len(values) > 1 else None,
            "bias": (mean - level) / level,
            "mae": statistics.fmean(abs(e) for e in errors),
            "errors": errors,
            "seconds": statistics.fmean(r["seconds"] for r in timed) if timed else None,
            "ms_step": (statistics.median(1000 * r["seconds"] / r["steps"] for r in timed)
                        if timed else None),
            "flags": flags,
        })
    return rows


def compare(rows):
    """ibtools against torch-mist for each spec both ran, per level: mean absolute error
    over seeds (bias and spread together), error of the mean, time per step, and the
    exact critic's reading of the same spec."""
    by_name = {(r["level"], r["estimator"]): r for r in rows}
    out = []
    for (level, name), r in sorted(by_name.items()):
        if not name.startswith("ibtools "):
            continue
        spec = name[len("ibtools "):]
        mist = by_name.get((level, f"torch-mist {spec}"))
        if mist is None:
            continue
        exact = by_name.get((level, f"exact critic, {exact_label(spec)}'s evaluation"))
        out.append({"level": level, "spec": spec, "ibtools": r, "mist": mist, "exact": exact,
                    "no_worse": r["mae"] <= mist["mae"]})
    return out


def render(records, setup: str, notes=()) -> str:
    rows = summarize(records)
    seeds = sorted({r["seed"] for r in records})
    lines = [f"Neural MI staircase: {setup}; seeds {', '.join(map(str, seeds))}.", "",
             "| true MI | estimator | seeds | mean value | sd | error of mean | "
             "mean abs. error | per-seed errors | s / run | ms / step | flags (runs) |",
             "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: r["level"]):
        sd = f"{r['sd']:.3f}" if r["sd"] is not None else "-"
        per_seed = " ".join(_pct(e) for e in r["errors"])
        timing = (f"{r['seconds']:.1f} | {r['ms_step']:.1f}" if r["seconds"] is not None
                  else "- | -")
        flags = "; ".join(f"{k} ({v})" for k, v in r["flags"].items())
        lines.append(f"| {r['level']:g} | {r['estimator']} | {r['seeds']} | {r['mean']:.3f} | "
                     f"{sd} | {_pct(r['bias'])} | {100 * r['mae']:.1f}% | {per_seed} | "
                     f"{timing} | {flags} |")
    pairs = compare(rows)
    if pairs:
        lines += ["", "ibtools against torch-mist, same spec, data, steps and batch "
                  "(mean absolute error over seeds; the exact critic's error is what the "
                  "bound itself reads with a perfect critic):", "",
                  "| true MI | spec | ibtools error of mean | torch-mist error of mean | "
                  "ibtools mean abs. error | torch-mist mean abs. error | exact critic | "
                  "ibtools no worse | ms / step ibtools / torch-mist |",
                  "|---:|---|---:|---:|---:|---:|---:|---|---:|"]
        for p in pairs:
            i, m, e = p["ibtools"], p["mist"], p["exact"]
            speed = (f"{i['ms_step']:.1f} / {m['ms_step']:.1f}"
                     if i["ms_step"] and m["ms_step"] else "-")
            lines.append(f"| {p['level']:g} | {p['spec']} | {_pct(i['bias'])} | "
                         f"{_pct(m['bias'])} | {100 * i['mae']:.1f}% | {100 * m['mae']:.1f}% | "
                         f"{_pct(e['bias']) if e else '-'} | "
                         f"{'yes' if p['no_worse'] else 'NO'} | {speed} |")
        worse = [f"{p['spec']} at {p['level']:g} nats" for p in pairs if not p["no_worse"]]
        lines += ["", f"ibtools no worse on {len(pairs) - len(worse)} of {len(pairs)} rows"
                  + (f"; worse on: {', '.join(worse)}." if worse else ".")]
    return "\n".join([*lines, "", *notes]).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=float, nargs="+", default=[2, 4, 6, 8, 10])
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="one run per seed: new data, split and initialisation")
    p.add_argument("--dim", type=int, default=20)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--critic", choices=["separable", "joint"], default="separable")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--device", default=None, help="None: CPU; 'cuda' for the GPU")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--methods", nargs="+", default=list(IBTOOLS_METHODS),
                   help="ibtools specs, e.g. mine smile:tau=10")
    p.add_argument("--mist-methods", nargs="+", default=list(MIST_METHODS),
                   help="torch-mist specs: mine, smile, smile:tau=<clip>")
    p.add_argument("--mist-python", type=Path, default=DEFAULT_MIST_PYTHON)
    p.add_argument("--no-mist", action="store_true")
    p.add_argument("--no-exact", action="store_true",
                   help="skip the rows that read each bound off the exact critic")
    p.add_argument("--records", type=Path, default=None,
                   help="append one JSON line per run here (for --merge)")
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="build the tables from these record files; run nothing")
    p.add_argument("--out", type=Path, default=None, help="also write the tables here")
    p.add_argument("--defaults", action="store_true",
                   help="ibtools and torch-mist MINE/InfoNCE each at its own defaults and both "
                        "matched, in one process (the torch-mist virtualenv's)")
    p.add_argument("--mist-worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the torch-mist subprocess too
    if args.mist_worker:  # OMP_NUM_THREADS from the parent sets its threads
        run_mist_worker(*args.mist_worker)
        return 0
    if args.defaults:
        return defaults_main(args)
    for spec in args.mist_methods:
        method, settings = parse_method(spec)
        allowed = MIST_SETTINGS.get(method)
        if allowed is None or set(settings) - set(allowed):
            p.error(f"--mist-methods {spec!r}: torch-mist runs mine and smile[:tau=<clip>]")

    setup = (f"d = {args.dim} + {args.dim}, n = {args.n}, {args.critic} critic, hidden "
             f"({args.hidden}, {args.hidden}), embed {args.embed_dim}, batch {args.batch_size}, "
             f"{args.steps} steps, lr {args.lr:g}, held-out {args.val_fraction:g}, "
             f"device {args.device or 'cpu'}")
    if args.merge:
        records, header = [], None
        for path in args.merge:
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                if "setup" in rec:
                    header = header or rec["setup"]
                else:
                    records.append(rec)
        table = render(records, header or "merged records")
        print(table)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(table)
        return 0

    cfg = {"critic": args.critic, "hidden": args.hidden, "embed_dim": args.embed_dim,
           "batch_size": args.batch_size, "steps": args.steps, "lr": args.lr,
           "val_fraction": args.val_fraction, "device": args.device,
           "mist_methods": args.mist_methods}
    sink = args.records.open("a") if args.records else None
    if sink:
        sink.write(json.dumps({"setup": setup}) + "\n")
    records, notes = [], []

    def keep(rec):
        records.append(rec)
        if sink:
            sink.write(json.dumps(rec) + "\n")
            sink.flush()
        err = (rec["value"] - rec["level"]) / rec["level"]
        print(f"level {rec['level']:g} seed {rec['seed']} {rec['estimator']}: "
              f"{rec['value']:.3f} ({_pct(err)})", file=sys.stderr, flush=True)

    for seed in args.seeds:
        for level in args.levels:
            x, y = staircase_data(args.n, args.dim, level, seed)
            base = {"level": level, "seed": seed}
            for spec in args.methods:
                keep({**base, "estimator": f"ibtools {spec}",
                      **run_ibtools(spec, x, y, cfg, seed)})
            if not args.no_exact:
                for label, value in exact_critic_values(args.methods, x, y, level, cfg,
                                                        seed).items():
                    keep({**base, "estimator": f"exact critic, {label}'s evaluation",
                          "value": value})
            if not args.no_mist:
                mist, note = run_mist(x, y, cfg, seed, args.mist_python)
                if note and note not in notes:
                    notes.append(note)
                for spec, rec in (mist or {}).items():
                    keep({**base, "estimator": f"torch-mist {spec}", **rec})
    if sink:
        sink.close()
    table = render(records, setup, notes)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
