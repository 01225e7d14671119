"""Training and analysis runs of the IBNorm study scripts, one process or several.

``train_all`` trains every (variant, seed) and ``analyze_study`` analyzes their checkpoints;
both take ``jobs`` and then spread the runs over worker processes
(:func:`run_parallel`).  Every run is seeded and analyzed on its own, into its own folder,
so the tables do not depend on ``jobs`` and an interrupted study resumes run by run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd


def say(message: str) -> None:
    """Print a progress line at once (the scripts run for minutes, often piped to a log)."""
    print(message, flush=True)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _start_worker(threads: int) -> None:
    """Each worker process computes on the parent's torch thread count."""
    import torch

    torch.set_num_threads(threads)


def run_parallel(task, jobs: int, items: list, done=None) -> list:
    """``[task(*item) for item in items]``, on ``jobs`` worker processes when ``jobs > 1``.

    Results come back in the order of ``items`` whatever order the workers finish in;
    ``done(index, result)`` is called as each finishes (progress lines).  Workers are
    started with ``spawn`` (a forked torch process can hang in its thread pools) and run
    on the parent's torch thread count.  The first failure cancels the tasks not yet
    started and is raised here; finished tasks have already saved their own files, so a
    rerun resumes from them.
    """
    jobs = min(jobs, len(items))
    results = [None] * len(items)
    if jobs <= 1:
        for i, item in enumerate(items):
            results[i] = task(*item)
            if done is not None:
                done(i, results[i])
        return results
    import concurrent.futures
    import multiprocessing

    import torch

    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker, initargs=(torch.get_num_threads(),))
    try:
        futures = {pool.submit(task, *item): i for i, item in enumerate(items)}
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if done is not None:
                done(i, results[i])
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def _train_one(model: str, config: dict, seed: int, run_dir: Path, device: str,
               kwargs: dict) -> tuple:
    """Train one run (a worker task); returns (seconds, the last history entry)."""
    from ibtools.models import train

    start = time.perf_counter()
    history = train(model, model_config=config, seed=seed, out_dir=run_dir,
                    device=None if device == "auto" else device, **kwargs)
    return time.perf_counter() - start, history[-1]


def train_all(variants, seeds, out: Path, train_kwargs: dict, device: str, log=say,
              jobs: int = 1) -> dict:
    """Train every (variant, seed) into ``out/checkpoints/<tag>/seed<k>``; skip finished runs.

    A run counts as finished when its ``history.json`` exists: ``train`` writes it last, so
    an interrupted run is trained again from scratch rather than resumed half-way.  ``jobs``
    trains that many runs at once in worker processes (:func:`run_parallel`); every run is
    seeded on its own, so the checkpoints do not depend on it.

    Returns
    -------
    dict
        ``{(variant tag, seed): [checkpoint paths in step order]}``.
    """
    model_config = dict(train_kwargs.get("model_config", {}))
    kwargs = {k: v for k, v in train_kwargs.items() if k != "model_config"}
    pending, names = [], []
    run_dirs = {}
    for variant in variants:
        for seed in seeds:
            run_dir = out / "checkpoints" / variant.tag / f"seed{seed}"
            run_dirs[(variant.tag, seed)] = run_dir
            if not (run_dir / "history.json").exists():
                config = {"norm": variant.norm, **model_config}
                if not variant.is_baseline:
                    config["lam"] = variant.lam
                pending.append((variant.model, config, seed, run_dir, device, kwargs))
                names.append(f"{variant.tag} seed {seed}")

    def trained(i, result):
        seconds, last = result
        metric = ", ".join(f"{k} {last[k]:.3f}" for k in ("test_accuracy", "val_loss")
                           if k in last)
        log(f"[train] {names[i]}: {seconds:.1f} s, {metric}")

    run_parallel(_train_one, jobs, pending, done=trained)
    return {key: sorted(run_dir.glob("step_*.pt")) for key, run_dir in run_dirs.items()}


def _analyze_one(checkpoints: list, run_out: Path, analyze_kwargs: dict) -> pd.DataFrame:
    """``ibtools.analyze`` one run's checkpoints into ``run_out`` (a worker task)."""
    import ibtools

    return ibtools.analyze([str(c) for c in checkpoints], out_dir=run_out, progress=False,
                           **analyze_kwargs)


def analyze_all(runs: dict, out: Path, *, folder: str = "analysis", save: bool = True,
                jobs: int = 1, **analyze_kwargs) -> pd.DataFrame:
    """``ibtools.analyze`` each run into ``out/<folder>/<tag>/seed<k>`` and join the tables.

    One results directory per run keeps every resumable save small (analyze rewrites its
    whole table after each step) and lets an interrupted study resume run by run.  ``jobs``
    analyzes that many runs at once in worker processes; the joined table is in run order
    and equal to the one-process table.  With ``save`` the joined table is saved as
    ``out/results.csv`` (and ``.json``).
    """
    from ibtools import results as results_io

    items = [(checkpoints, out / folder / tag / f"seed{seed}", analyze_kwargs)
             for (tag, seed), checkpoints in runs.items()]
    tables = run_parallel(_analyze_one, jobs, items)
    table = results_io.order_columns(pd.concat(tables, ignore_index=True))
    if save:
        results_io.save_results(table, out)
    return table


def analyze_study(runs: dict, out: Path, *, every: list, final: list, final_only: bool = False,
                  jobs: int = 1, **analyze_kwargs) -> pd.DataFrame:
    """Analyze every checkpoint with the ``every`` settings and each run's last checkpoint
    with the ``final`` settings too; save and return the joined table.

    The extended settings (KDE's lower bound, KSG at a second k) are what the comparisons at
    the final checkpoint need; reading them at every checkpoint would double the run time
    for the information plane alone.  ``final_only`` analyzes only the last checkpoints,
    with both lists (no trajectories).  ``jobs`` as in :func:`analyze_all`.
    """
    from ibtools import results as results_io

    last = {key: checkpoints[-1:] for key, checkpoints in runs.items()}
    if final_only:
        table = analyze_all(last, out, folder="analysis_final_all", save=False, jobs=jobs,
                            estimators=[*every, *final], **analyze_kwargs)
    else:
        parts = [analyze_all(runs, out, save=False, jobs=jobs, estimators=every,
                             **analyze_kwargs)]
        if final:
            parts.append(analyze_all(last, out, folder="analysis_final", save=False, jobs=jobs,
                                     estimators=final, **analyze_kwargs))
        table = results_io.order_columns(pd.concat(parts, ignore_index=True))
    results_io.save_results(table, out)
    return table
