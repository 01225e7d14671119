"""What IB tracking costs a training run: the demo MLP on digits, tracked every N steps.

    python -m benchmarks.tracking                      # 30 epochs (660 steps), every 20 and 200
    python -m benchmarks.tracking --quick              # 6 epochs, one repeat
    python -m benchmarks.tracking --every 50 --estimators binning:n_bins=30,n_permutations=0

Trains the demo's MLP (LayerNorm, widths 32-24-16-12, AdamW 2e-3, batch 64, one torch
thread, as ``ibtools demo`` does) from the same seed without tracking and with
``ibtools.track`` in each mode: ``foreground`` (capture and estimators on the training
thread), ``thread`` (estimators in a worker thread) and ``process`` (estimators in a worker
process; only the capture, one forward pass of the probe set, runs in the loop).

What is counted, per run (median over ``--repeats`` runs, configurations interleaved):

- loop wall s: the training loop, from the first step to the last, tracker calls included;
  the tracker is created (probe set, worker start) before it and closed after it;
- loop thread CPU s: the training thread's CPU time in the loop (``time.thread_time``): the
  cost tracking puts on training itself whatever else the machine runs;
- worker CPU s: the estimators' CPU time outside the training thread (the worker thread's
  share of the process CPU time, or the worker process's own count);
- drain s: ``close()`` after the loop: waiting for measurements still queued, last writes;
- in step(): wall and thread CPU time the training thread spends inside ``tracker.step``
  (capture, and in the foreground the estimators), counted directly, so it is free of the
  run-to-run noise of the loop's total (about +-10 % on a shared machine); it leaves out
  indirect costs (a worker thread holding the GIL, a worker process taking a core, caches);
- overhead: loop wall and loop thread CPU over the untracked run's; step() CPU over the
  untracked loop's thread CPU.

The final weights must be bit-identical to the untracked run's (the table says so).  The
target of issue 20 is < 10 % of training time at every=20; the verdict line applies it to
the loop's wall time and to the training thread's CPU time.  Wall times on a shared machine
are noisy; the load average is printed before and after, and each run starts a second after
the one before (a worker process that run started exits in the background).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ibtools
from ibtools.models import build_model
from ibtools.models.data import load_digits_split

DEFAULT_ESTIMATORS = ["binning:n_bins=30,n_permutations=0", "kde:noise_var=0.1,n_permutations=0"]


def train_measured(epochs: int, seed: int, tracker_kwargs: dict | None) -> dict:
    """Train the demo MLP once; return the timings described in the module docstring, the
    number of measurements and the final weights."""
    torch.manual_seed(seed)
    model = build_model("mlp", norm="layer")
    data = load_digits_split()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    tracker = (ibtools.track(model, "digits", **tracker_kwargs)
               if tracker_kwargs is not None else None)
    setup = time.perf_counter() - start
    step, in_step, in_step_cpu = 0, 0.0, 0.0
    start, thread0, proc0 = time.perf_counter(), time.thread_time(), time.process_time()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data.y_train), generator=gen)
        for i in range(0, len(order), 64):
            batch = order[i:i + 64]
            loss = F.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if tracker is not None:
                w, c = time.perf_counter(), time.thread_time()
                tracker.step(step)
                in_step += time.perf_counter() - w
                in_step_cpu += time.thread_time() - c
    loop, thread_cpu = time.perf_counter() - start, time.thread_time() - thread0
    drain = 0.0
    if tracker is not None:
        start = time.perf_counter()
        tracker.close()
        drain = time.perf_counter() - start
    other = time.process_time() - proc0 - (time.thread_time() - thread0)
    if tracker is not None and tracker.worker_cpu_seconds is not None:
        other = tracker.worker_cpu_seconds
    return {"setup": setup, "loop": loop, "thread_cpu": thread_cpu, "worker_cpu": other,
            "in_step": in_step, "in_step_cpu": in_step_cpu,
            "drain": drain, "n": 0 if tracker is None else len(tracker.steps),
            "weights": {k: v.clone() for k, v in model.state_dict().items()}}


def train_once(epochs: int, seed: int, tracker_kwargs: dict | None):
    """Train the demo MLP; return (seconds of loop and drain, measurements, final weights)."""
    r = train_measured(epochs, seed, tracker_kwargs)
    return r["loop"] + r["drain"], r["n"], r["weights"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="6 epochs, one repeat")
    parser.add_argument("--every", type=int, action="append", default=None,
                        help="measure every N steps (repeatable; default 20 and 200)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-samples", type=int, default=450)
    parser.add_argument("--modes", default="foreground,thread,process")
    parser.add_argument("--estimators", action="append", default=None,
                        help="estimator spec (repeatable); default binning(30) and KDE(0.1) "
                             "without the permutation check")
    parser.add_argument("--layers", default="layers.*")
    args = parser.parse_args(argv)
    epochs, repeats = (6, 1) if args.quick else (args.epochs, args.repeats)
    torch.set_num_threads(1)
    estimators = args.estimators or DEFAULT_ESTIMATORS
    background = {"foreground": False, "thread": "thread", "process": "process"}
    configs = [("no tracking", None, None)]
    for every in args.every or [20, 200]:
        for mode in args.modes.split(","):
            configs.append((mode, every, {"layers": args.layers, "estimators": estimators,
                                          "every": every, "max_samples": args.max_samples,
                                          "background": background[mode]}))
    load0 = _load()
    train_measured(1, 0, configs[-1][2])  # warm-up: imports, compiled kernels, the probe set
    runs = {i: [] for i in range(len(configs))}
    for _ in range(repeats):  # interleaved, so a change in the machine's load hits all alike
        for i, (_, _, kwargs) in enumerate(configs):
            time.sleep(1.0)  # a worker process of the run before exits in the background
            runs[i].append(train_measured(epochs, 0, kwargs))
    _print_table(configs, runs, epochs, repeats, estimators, args, load0)
    return 0


def _median(runs, key):
    return statistics.median(r[key] for r in runs)


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def _print_table(configs, runs, epochs, repeats, estimators, args, load0):
    base = runs[0]
    base_wall, base_cpu = _median(base, "loop"), _median(base, "thread_cpu")
    print(f"Demo MLP on digits, {epochs} epochs ({epochs * 22} steps), {args.max_samples} probe "
          f"rows, layers {args.layers!r}, estimators {estimators}; median of {repeats}; "
          f"load average 1/5/15 min {load0} before, {_load()} after\n")
    print("| mode | every | measurements | loop wall s | overhead (wall) | loop thread CPU s "
          "| overhead (thread CPU) | in step(): wall s / thread CPU s | step() CPU / untracked "
          "loop CPU | worker CPU s | drain s | tracker start s | weights identical |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    verdicts = []
    for i, (label, every, _) in enumerate(configs):
        wall, cpu = _median(runs[i], "loop"), _median(runs[i], "thread_cpu")
        same = all(torch.equal(r["weights"][k], base[0]["weights"][k])
                   for r in runs[i] for k in base[0]["weights"])
        over_wall, over_cpu = wall / base_wall - 1.0, cpu / base_cpu - 1.0
        step_cpu = _median(runs[i], "in_step_cpu")
        print(f"| {label} | {every or '-'} | {runs[i][0]['n']} | {wall:.2f} "
              f"| {100 * over_wall:+.1f} % | {cpu:.2f} | {100 * over_cpu:+.1f} % "
              f"| {_median(runs[i], 'in_step'):.3f} / {step_cpu:.3f} "
              f"| {100 * step_cpu / base_cpu:.1f} % "
              f"| {_median(runs[i], 'worker_cpu'):.2f} | {_median(runs[i], 'drain'):.2f} "
              f"| {_median(runs[i], 'setup'):.2f} | {'yes' if same else 'NO'} |")
        if every == 20:
            verdicts.append(f"{label}: wall {'PASS' if over_wall < 0.10 else 'FAIL'}, thread "
                            f"CPU {'PASS' if over_cpu < 0.10 else 'FAIL'}, step() CPU "
                            f"{'PASS' if step_cpu / base_cpu < 0.10 else 'FAIL'}")
        if not same:
            verdicts.append(f"{label} every={every}: FAIL (weights differ from the untracked run)")
    print("\nTarget < 10 % at every=20: " + "; ".join(verdicts))


if __name__ == "__main__":
    sys.exit(main())
