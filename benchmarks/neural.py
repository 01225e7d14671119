"""Gaussian staircase for the neural MI bounds, against torch-mist on the same data.

For each true MI level (default 2, 4, 6, 8, 10 nats) it draws x, y in R^20 with equal
per-coordinate correlation (I = -d/2 ln(1 - rho^2)), n = 20 000 rows, and runs ibtools'
MINE, NWJ, InfoNCE and SMILE and, when available, torch-mist's MINE and SMILE with the
same critic shape, batch size and number of steps.  It prints one markdown table: value,
relative error and time per estimator and level.  InfoNCE's ln(batch) ceiling and
SMILE's clipping bias are expected to show as downward errors at high MI; they are part
of the result, not hidden.

Both libraries train for exactly ``--steps`` steps (no early stopping: ibtools keeps the
critic with the best trailing mean of its held-out evaluations, torch-mist its final
critic) on the same 80 % of the rows and report on the other 20 %, so time per step
compares like with like.  ibtools uses its defaults otherwise (cosine learning-rate decay,
encoders with a linear shortcut, MINE without the moving-average correction); torch-mist
uses its own defaults with the same critic widths, batch size, steps and learning rate.

torch-mist (PyPI ``torch-mist``) pins numpy < 2, so it lives in its own virtualenv and
runs in a subprocess; see benchmarks/requirements-torch-mist.txt for the setup:

    python -m venv .venv-mist
    .venv-mist/bin/pip install torch==2.13.0
    .venv-mist/bin/pip install -c benchmarks/requirements-torch-mist.txt \
        -r benchmarks/requirements-torch-mist.txt
    .venv-mist/bin/pip install --no-deps -e .

Usage::

    python benchmarks/neural.py                      # full size (slow on a CPU)
    python benchmarks/neural.py --levels 2 4 6 --steps 1000 --hidden 128 --out out/neural.md
    python benchmarks/neural.py --device cuda --levels 2 4 6 8 10   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MIST_PYTHON = REPO / ".venv-mist" / "bin" / "python"
IBTOOLS_METHODS = ("mine", "mine:ema=0.99", "nwj", "infonce", "smile")
MIST_METHODS = ("mine", "smile")


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


def run_ibtools(method, x, y, cfg):
    import torch

    import ibtools

    method, settings = parse_method(method)
    start = time.perf_counter()
    r = ibtools.mutual_information(
        x, y, method=method, **settings, critic=cfg["critic"], hidden=(cfg["hidden"],) * 2,
        embed_dim=cfg["embed_dim"], batch_size=cfg["batch_size"], steps=cfg["steps"],
        lr=cfg["lr"], val_fraction=cfg["val_fraction"], patience=None, seed=cfg["seed"],
        device=cfg["device"], progress=False)
    if r.details["device"].startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"value": r.value, "seconds": seconds, "steps": r.details["steps_run"],
            "flags": r.flags}


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


def exact_critic_values(methods, x, y, level, cfg):
    """Each bound read off the exact critic with ibtools' held-out evaluation (the same
    ~2 000 negatives per row, InfoNCE per batch, SMILE's clip), on the held-out rows of
    :func:`split`: what the estimator converges to with a perfect critic, so a row's error
    splits into the bound's own bias (this) and the training shortfall (the rest)."""
    import torch

    from ibtools.estimators import get_estimator

    _, test = split(len(x), cfg["val_fraction"], cfg["seed"])
    b = cfg["batch_size"]
    batches = torch.as_tensor(test[: (len(test) // b) * b]).view(-1, b)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    out = {}
    for method in dict.fromkeys(m.split(":")[0] for m in methods):
        est = get_estimator(method, batch_size=b, critic="separable")
        critic = ExactCritic(x.shape[1], level, shift=1.0 if est.bound == "nwj" else 0.0)
        tau = float(est.tau) if est.bound == "smile" else None
        value, _, _ = est._evaluate(critic, xt, yt, est._groups(batches), b, tau)
        out[method] = value
    return out


def parse_method(text: str):
    """``"mine"`` or ``"mine:ema=0.99"`` -> (method, settings)."""
    from ibtools.estimators.spec import parse_estimator_spec

    spec = parse_estimator_spec(text)
    return spec.method, dict(spec.settings)


def run_mist_worker(data_path: str, cfg_json: str) -> None:
    """Runs inside the torch-mist virtualenv; prints one JSON line per method."""
    import torch
    from torch_mist import estimate_mi

    cfg = json.loads(cfg_json)
    data = np.load(data_path)
    x, y = data["x"], data["y"]
    train, test = split(len(x), cfg["val_fraction"], cfg["seed"])
    torch.manual_seed(cfg["seed"])
    device = cfg["device"] or "cpu"
    for method in cfg["methods"]:
        start = time.perf_counter()
        value = estimate_mi(
            data=(torch.from_numpy(x[train]), torch.from_numpy(y[train])),
            test_data=(torch.from_numpy(x[test]), torch.from_numpy(y[test])),
            estimator=method, critic_type=cfg["critic"], hidden_dims=[cfg["hidden"]] * 2,
            k_dim=cfg["embed_dim"] if cfg["critic"] == "separable" else None,
            neg_samples=-1,  # all other rows of the batch, as ibtools uses
            batch_size=cfg["batch_size"], max_iterations=cfg["steps"],
            optimizer_params={"lr": cfg["lr"]}, early_stopping=False, verbose=False,
            logger=False, device=device)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(json.dumps({"method": method, "value": float(value), "seconds": seconds,
                          "steps": cfg["steps"]}), flush=True)


def run_mist(x, y, cfg, mist_python: Path):
    if not mist_python.exists():
        return None, f"torch-mist skipped: {mist_python} not found (see the module docstring)"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npz")
        np.savez(path, x=x, y=y)
        mist_cfg = dict(cfg, methods=list(MIST_METHODS))
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=float, nargs="+", default=[2, 4, 6, 8, 10])
    p.add_argument("--dim", type=int, default=20)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--critic", choices=["separable", "joint"], default="separable")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="None: CPU; 'cuda' for the GPU")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--methods", nargs="+", default=list(IBTOOLS_METHODS))
    p.add_argument("--mist-python", type=Path, default=DEFAULT_MIST_PYTHON)
    p.add_argument("--no-mist", action="store_true")
    p.add_argument("--no-exact", action="store_true",
                   help="skip the rows that read each bound off the exact critic")
    p.add_argument("--out", type=Path, default=None, help="also write the table here")
    p.add_argument("--mist-worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the torch-mist subprocess too
    if args.mist_worker:  # OMP_NUM_THREADS from the parent sets its threads
        run_mist_worker(*args.mist_worker)
        return 0

    cfg = {"critic": args.critic, "hidden": args.hidden, "embed_dim": args.embed_dim,
           "batch_size": args.batch_size, "steps": args.steps, "lr": args.lr,
           "val_fraction": args.val_fraction, "seed": args.seed, "device": args.device}
    header = ("| true MI | estimator | value | rel. error | seconds | ms / step | flags |\n"
              "|---:|---|---:|---:|---:|---:|---|")
    lines, notes = [header], []
    for level in args.levels:
        x, y = staircase_data(args.n, args.dim, level, args.seed)
        results = {}
        for method in args.methods:
            results[f"ibtools {method}"] = run_ibtools(method, x, y, cfg)
        if not args.no_exact:
            exact = exact_critic_values(args.methods, x, y, level, cfg)
            for method, value in exact.items():
                results[f"exact critic, {method}'s evaluation"] = {"value": value}
        if not args.no_mist:
            mist, note = run_mist(x, y, cfg, args.mist_python)
            if note and note not in notes:
                notes.append(note)
            for method, rec in (mist or {}).items():
                results[f"torch-mist {method}"] = rec
        for name, rec in results.items():
            err = (rec["value"] - level) / level
            flags = "; ".join(f.split(":")[0] for f in rec.get("flags", []))
            timing = (f"{rec['seconds']:.1f} | {1000 * rec['seconds'] / rec['steps']:.1f}"
                      if "seconds" in rec else "- | -")
            lines.append(f"| {level:g} | {name} | {rec['value']:.3f} | {100 * err:+.1f}% | "
                         f"{timing} | {flags} |")
            print(lines[-1], file=sys.stderr, flush=True)
    setup = (f"d = {args.dim} + {args.dim}, n = {args.n}, {args.critic} critic, hidden "
             f"({args.hidden}, {args.hidden}), embed {args.embed_dim}, batch {args.batch_size}, "
             f"{args.steps} steps, lr {args.lr:g}, held-out {args.val_fraction:g}, "
             f"device {args.device or 'cpu'}")
    table = "\n".join([f"Neural MI staircase: {setup}.", "", *lines, "", *notes])
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
