"""End-to-end time of ``ibtools.analyze`` on a 12-layer tiny GPT (the analysis target).

    python -m benchmarks.analyze_gpt                 # 8 192 tokens, 3 estimator settings
    python -m benchmarks.analyze_gpt --profile 25    # also print the 25 costliest functions

What is timed is what a user waits for after ``ibtools analyze``: loading the checkpoint from
disk, reading the text, the forward passes with the capture hooks, and every estimate
(I(T;Y), I(X;T) and I(T_prev;T) for each block output and each setting).  Building and
saving the untrained model happen before the clock starts; its weights do not change how
long the analysis takes.  The text is the ``inspect`` module's source (``data="text"``, the
offline corpus the reference language models use).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import tempfile
import time
from pathlib import Path

#: The three settings per layer of the target (one per estimator family that scales to
#: 8 192 rows of 64 dimensions in seconds on a CPU).
DEFAULT_ESTIMATORS = ("binning:n_bins=30", "kde:noise_var=0.1", "gaussian")

#: The tiny GPT: 12 blocks of width 64, 4 heads, 64-token context.
GPT_CONFIG = {"n_layer": 12, "n_head": 4, "n_embd": 64, "block_size": 64}


def write_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Build the 12-layer GPT with seeded initial weights and save it as an ibtools
    checkpoint in ``folder``; returns the path."""
    import torch

    from ibtools.models import build_model, save_checkpoint

    torch.manual_seed(seed)
    model = build_model("gpt", **GPT_CONFIG)
    return save_checkpoint(model, folder / "gpt12.pt", meta={"seed": seed, "step": 0})


@contextlib.contextmanager
def cpu_by_estimator():
    """Within the block, the CPU seconds (this process, all threads) spent in each estimator
    class's outermost ``mutual_information`` calls, by class name (the dict yielded)."""
    from ibtools.estimators import base

    totals: dict = {}
    original = base.Estimator.mutual_information
    depth = [0]

    def timed(self, *args, **kwargs):
        depth[0] += 1
        start = time.process_time()
        try:
            return original(self, *args, **kwargs)
        finally:
            depth[0] -= 1
            if not depth[0]:
                name = type(self).__name__
                totals[name] = totals.get(name, 0.0) + time.process_time() - start

    base.Estimator.mutual_information = timed
    try:
        yield totals
    finally:
        base.Estimator.mutual_information = original


def time_analysis(tokens: int = 8192, estimators=DEFAULT_ESTIMATORS, device: str = "cpu",
                  seed: int = 0, profile_top: int = 0) -> dict:
    """Run ``ibtools.analyze`` once on a fresh checkpoint and time it end to end.

    Parameters
    ----------
    tokens : int
        Rows per layer (``max_samples``): token positions for a language model.
    estimators : sequence of str
        Estimator specs, one analysis setting each.
    device : str
        Where the model runs and the estimators compute.
    seed : int
        Seeds the model's initial weights, the token sample and the estimators.
    profile_top : int
        When positive, run under :mod:`cProfile` and return the report of the
        ``profile_top`` functions with the largest cumulative time as ``"profile"``.

    Returns
    -------
    dict
        ``seconds`` (wall time of the analyze call), ``cpu_seconds`` (its CPU time, all
        threads), ``cpu_by_estimator`` (of that, per estimator class), ``load`` (1-minute
        load average before and after), ``rows`` (results-table rows), ``layers``,
        ``settings``, ``tokens``, ``dim`` and, with profiling, ``profile``.
    """
    import ibtools

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_checkpoint(Path(tmp), seed)
        profiler = cProfile.Profile() if profile_top > 0 else None
        load = [os.getloadavg()[0]]
        start, cpu = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        with cpu_by_estimator() as split:
            table = ibtools.analyze(str(ckpt), data="text", layers="blocks",
                                    estimators=list(estimators), reference="previous",
                                    max_samples=tokens, device=device, seed=seed,
                                    progress=False)
        if profiler is not None:
            profiler.disable()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        load.append(os.getloadavg()[0])
    out = {"seconds": seconds, "cpu_seconds": cpu, "cpu_by_estimator": split, "load": load,
           "rows": len(table), "layers": int(table["layer"].nunique()),
           "settings": int(table["setting"].nunique()), "tokens": int(table["n_samples"].max()),
           "dim": int(table["dim"].max()),
           "estimate_seconds": float(table["seconds"].sum())}
    if profiler is not None:
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(profile_top)
        out["profile"] = buf.getvalue()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--device", default="cpu")
    p.add_argument("--estimators", default=",".join(DEFAULT_ESTIMATORS),
                   help="comma-separated estimator specs")
    p.add_argument("--profile", type=int, default=0, metavar="TOP",
                   help="profile and print the TOP functions by cumulative time")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    specs = [s for s in args.estimators.split(",") if s]
    r = time_analysis(args.tokens, specs, args.device, profile_top=args.profile)
    split = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["cpu_by_estimator"].items()))
    print(f"analyze: {r['layers']} layers x {r['settings']} settings, {r['tokens']} tokens of "
          f"dim {r['dim']}: {r['seconds']:.1f} s end to end "
          f"({r['estimate_seconds']:.1f} s in the estimators); CPU {r['cpu_seconds']:.1f} s "
          f"(estimators: {split}); load average {r['load'][0]:.1f} -> {r['load'][1]:.1f}")
    if args.profile:
        print(r["profile"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
