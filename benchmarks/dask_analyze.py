"""Wall time of ``ibtools.analyze`` serially and on a 2-process Dask LocalCluster.

    nice -n 10 python benchmarks/dask_analyze.py              # both workloads
    nice -n 10 python benchmarks/dask_analyze.py --quick      # fewer checkpoints, for a smoke run

Two workloads, each analysed into a fresh run directory by one process and then by a
LocalCluster of 2 one-thread worker processes (``executor=client``); the tables must be equal
(every column but ``seconds``), and the script says so:

- demo: the checkpoints ``ibtools demo`` trains (LayerNorm and IBNorm-S/L/T MLPs on digits,
  step 0, three along training and the last), analysed as the demo does (450 test rows, five
  estimator settings, block outputs).  Training length does not change the analysis' cost,
  so the models are trained for ``--epochs`` (6) epochs.
- grid: 12 checkpoints x 4 layers x 3 settings: three MLPs (widths 32-24-16-12; LayerNorm,
  IBNorm-T lam 1 and 4) with checkpoints at steps 0, 10, 20, 30, the library's default
  estimators (binning 30 bins, KDE noise 0.1, KSG k 3 on copula ranks) on the 1347 rows of
  digits' training split.

Each workload runs on two clusters one after the other: one started by
``ibtools.distributed.local_client`` with ibtools' worker settings (``lean``:
``LEAN_WORKER_CONFIG``, no ``MALLOC_TRIM_THRESHOLD_`` and no Dask profiler) and one with
Dask's defaults (``dask``), so the table shows what the settings change.  Times are
steady-state: both sides first analyse one checkpoint (imports, compiled kernels; the
cluster runs one task on each worker), and the cluster's start is timed separately.  Each configuration runs ``--repeats`` times
and the median is printed, with the machine's load average before and after.  The target of
issue 20 is a speed-up >= 1.6 on 2 cores.

Wall time means something only on an otherwise idle machine.  On a shared one, Linux's
autogroup scheduler (``/proc/sys/kernel/sched_autogroup_enabled``) gives each terminal
session one share of the CPUs however many processes it runs, so 2 workers started from one
session get no more CPU than the serial run did.  The script therefore also measures CPU
time, which contention does not inflate: the serial process's, and each worker's and the
driver's (scheduler included) during the cluster run.  From them it estimates the wall time
on 2 idle cores as the larger of the busiest worker's CPU time and half the total, and the
speed-up as the serial CPU time over that: what the cluster gains where it has the cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ibtools
from ibtools.distributed import local_client


def _train_demo(root: Path, epochs: int, quick: bool) -> list[str]:
    from ibtools.demo import FULL_MODELS, QUICK_MODELS
    from ibtools.models import train
    from ibtools.models.data import load_digits_split

    steps_per_epoch = -(-int(load_digits_split().x_train.shape[0]) // 64)
    every = max(1, epochs * steps_per_epoch // 3)
    paths = []
    for norm, lam in (QUICK_MODELS if quick else FULL_MODELS):
        out = root / "demo" / f"{norm}_lam{lam:g}"
        train("mlp", model_config={"norm": norm, "lam": lam}, data="digits", epochs=epochs,
              seed=0, out_dir=out, checkpoint_every=every, batch_size=64)
        paths += sorted(str(p) for p in out.glob("*.pt"))
    return paths


def _train_grid(root: Path, quick: bool) -> list[str]:
    from ibtools.models import train

    paths = []
    for norm, lam in ((("layer", 0.0), ("ib-T", 1.0)) if quick else
                      (("layer", 0.0), ("ib-T", 1.0), ("ib-T", 4.0))):
        out = root / "grid" / f"{norm}_lam{lam:g}"
        train("mlp", model_config={"norm": norm, "lam": lam}, data="digits", max_steps=30,
              checkpoint_every=10, seed=0, out_dir=out)
        paths += sorted(str(p) for p in out.glob("*.pt"))
    return paths


def _timed(fn, repeats: int, client=None):
    """Median wall time, median CPU time (this process; with ``client``, also each worker's),
    and the last table."""
    walls, cpus, workers, table = [], [], [], None
    for _ in range(repeats):
        before = client.run(time.process_time) if client is not None else {}
        start, cpu = time.perf_counter(), time.process_time()
        table = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
        after = client.run(time.process_time) if client is not None else {}
        workers.append(sorted(after[w] - before[w] for w in before if w in after))
    middle = sorted(range(repeats), key=walls.__getitem__)[repeats // 2]
    return statistics.median(walls), cpus[middle], workers[middle], table


def _line(name, paths, options, serial_run, lean, cluster_run) -> str:
    """One table line: the serial run against a cluster run, wall and CPU."""
    serial_s, serial_cpu, _, serial, load_before = serial_run
    cluster_s, driver_cpu, worker_cpu, parallel = cluster_run
    idle_wall = max(max(worker_cpu), (sum(worker_cpu) + driver_cpu) / 2)
    cols = [c for c in serial.columns if c != "seconds"]
    same = serial[cols].reset_index(drop=True).equals(parallel[cols].reset_index(drop=True))
    if not same:
        pd.set_option("display.width", 200)
        print(serial[cols].compare(parallel[cols]), file=sys.stderr)
    return (f"| {name} | {'lean' if lean else 'dask'} | {len(paths)} x "
            f"{serial['layer'].nunique()} x {len(options['estimators'])} "
            f"| {serial['n_samples'].iloc[0]} | {serial_s:.1f} | {cluster_s:.1f} "
            f"| {serial_s / cluster_s:.2f} | {serial_cpu:.1f} "
            f"| {' + '.join(f'{c:.1f}' for c in worker_cpu)} + {driver_cpu:.1f} "
            f"| {sum(worker_cpu) / serial_cpu:.2f} | {serial_cpu / idle_wall:.2f} "
            f"| {'yes' if same else 'NO'} | {load_before} / {_load()} |")


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer checkpoints")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of the demo models")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workloads", default="demo,grid", help="comma-separated: demo, grid")
    args = parser.parse_args(argv)
    chosen = args.workloads.split(",")
    from ibtools.demo import FULL_ESTIMATORS, QUICK_ESTIMATORS

    root = Path(tempfile.mkdtemp(prefix="ibtools-dask-bench-"))
    workloads = {}
    if "demo" in chosen:
        workloads["demo"] = (_train_demo(root, args.epochs, args.quick),
                             {"estimators": QUICK_ESTIMATORS if args.quick else FULL_ESTIMATORS,
                              "max_samples": 450, "betas": [0.1]})
    if "grid" in chosen:
        workloads["grid"] = (_train_grid(root, args.quick),
                             {"estimators": list(ibtools.analysis.DEFAULT_ESTIMATORS),
                              "split": "train", "max_samples": 2000, "betas": [0.1]})
    runs = iter(range(10**6))

    def run(paths, options, executor=None):
        return ibtools.analyze(paths, data="digits", device="cpu", progress=False,
                               out_dir=root / f"run{next(runs)}", executor=executor, **options)

    serial = {}
    for name, (paths, options) in workloads.items():
        run(paths[:1], options)  # warm: imports and compiled kernels
        load_before = _load()
        serial[name] = (*_timed(lambda p=paths, o=options: run(p, o), args.repeats),
                        load_before)
    lines, starts = [], {}
    for lean in (True, False):  # ibtools' worker settings, then Dask's defaults
        start = time.perf_counter()
        with local_client(2, "cpu", lean=lean) as client:
            starts[lean] = time.perf_counter() - start
            for name, (paths, options) in workloads.items():
                run(paths[:2], options, client)  # warm: a task on each worker
                lines.append(_line(name, paths, options, serial[name], lean, _timed(
                    lambda p=paths, o=options: run(p, o, client), args.repeats, client)))
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)  # Dask's nanny sets it here too
    print(f"Dask LocalCluster, 2 worker processes x 1 thread (started and warmed in "
          f"{starts[True]:.1f} s with ibtools' worker settings, {starts[False]:.1f} s with "
          f"Dask's defaults); {os.cpu_count()} CPUs; median of {args.repeats} run(s); torch "
          f"threads 1 per process (threads='auto').  Worker settings: 'lean' = "
          f"ibtools.distributed.cluster.LEAN_WORKER_CONFIG, 'dask' = Dask's defaults.\n")
    print("| workload | workers | checkpoints x layers x settings | rows | serial wall s "
          "| 2 workers wall s | wall speed-up | serial CPU s | CPU s: worker + worker + driver "
          "| worker CPU / serial CPU | speed-up on 2 idle cores (from CPU) | same table "
          "| load avg 1/5/15 min (before serial / after the cluster run) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
