"""Timing, peak-memory, matrix-multiply-rate and table helpers shared by the benchmarks.

Peak memory is read in the measuring process itself: before a measurement the kernel's
high-water mark of the resident set is reset (``echo 5 > /proc/self/clear_refs``, Linux
>= 4.0) and freed heap memory is handed back to the system (``malloc_trim``); afterwards
``VmHWM`` minus the resident set at the start is what the call added at its peak (its
scratch buffers and outputs, not the inputs it was given).  Where /proc cannot do this
(macOS, locked-down kernels) memory is reported as unknown rather than guessed.  On CUDA
the peak of torch's allocator is reported as well.
"""

from __future__ import annotations

import ctypes
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

_MIB = 2.0**20


# --------------------------------------------------------------------------- memory


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    # glibc keeps freed blocks below its mmap threshold (up to 32 MiB each) in the heap,
    # where they would hide the next call's allocations from the resident set
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> bool:
    """Reset the process's resident-set high-water mark; False where that is impossible."""
    _trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Context manager: ``added_mib`` (peak resident set during the block minus the resident
    set at its start), ``peak_mib`` (the peak itself) and ``cuda_mib`` (peak CUDA allocation),
    each None when it cannot be measured."""

    def __init__(self, cuda: bool = False) -> None:
        self.cuda = cuda
        self.added_mib = self.peak_mib = self.cuda_mib = None

    def __enter__(self):
        self._ok = reset_peak()
        self._start = _status_kib("VmRSS")
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._cuda_start = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.cuda_mib = (torch.cuda.max_memory_allocated() - self._cuda_start) / _MIB
        peak = _status_kib("VmHWM")
        if self._ok and peak is not None and self._start is not None:
            self.peak_mib = peak / 1024.0
            self.added_mib = max(0.0, (peak - self._start) / 1024.0)


# --------------------------------------------------------------------------- timing


@dataclass
class Measurement:
    """What :func:`measure` returns: the value of the first call and the spread of times."""

    value: object
    times: list = field(default_factory=list)
    cpu_times: list = field(default_factory=list)
    added_mib: float | None = None
    cuda_mib: float | None = None

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)

    @property
    def best_seconds(self) -> float:
        """The fastest run: what the machine can do when nothing else gets in the way (the
        kernel-rate fractions use it, as the matmul rates they divide by are best-of too)."""
        return min(self.times)

    @property
    def cpu_seconds(self) -> float:
        return statistics.median(self.cpu_times)

    @property
    def runs(self) -> int:
        return len(self.times)


def _sync(device) -> None:
    if device is not None and str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def measure(fn, *, repeats: int = 3, budget_s: float = 20.0, warmup=None,
            device=None) -> Measurement:
    """Call ``fn()`` up to ``repeats`` times and keep the median wall and CPU time.

    Parameters
    ----------
    fn : callable
        The work; its first return value is kept.
    repeats : int
        Most runs.  Runs stop early once their total exceeds ``budget_s`` (a 100 s reference
        is timed once), so the table states how many runs each median has.
    budget_s : float
        Seconds after which no further run starts.
    warmup : callable, optional
        Called once before timing (e.g. the same work on 200 rows) so lazy imports, thread
        pools and first-touch allocations are not billed to the first run.
    device : str, optional
        A CUDA device is synchronised around each run and its allocator peak recorded.

    Notes
    -----
    CPU time is the process's (all threads), so on a shared machine it shows what an idle
    one would spend; wall time is what a user waits.  Memory is the peak over all runs.
    """
    if warmup is not None:
        warmup()
    cuda = device is not None and str(device).startswith("cuda")
    out = Measurement(value=None)
    with PeakMemory(cuda=cuda) as mem:
        total = 0.0
        for i in range(max(1, repeats)):
            _sync(device)
            start, cpu = time.perf_counter(), time.process_time()
            value = fn()
            _sync(device)
            elapsed = time.perf_counter() - start
            out.times.append(elapsed)
            out.cpu_times.append(time.process_time() - cpu)
            if i == 0:
                out.value = value
            total += elapsed
            if total > budget_s:
                break
    out.added_mib, out.cuda_mib = mem.added_mib, mem.cuda_mib
    return out


# --------------------------------------------------------------------------- machine


def matmul_rate(n: int = 4096, d: int = 1024, dtype: str = "float32", device: str = "cpu",
                repeats: int = 5) -> float:
    """Measured GFLOP/s of ``(n, d) @ (d, n)`` (2 n^2 d flops) in torch, best of
    ``repeats``: the machine's practical peak for the shapes the pairwise kernels use."""
    import torch

    dt = getattr(torch, dtype)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, d, generator=g, dtype=dt, device=device)
    b = torch.randn(d, n, generator=g, dtype=dt, device=device)
    out = torch.empty(n, n, dtype=dt, device=device)
    torch.mm(a, b, out=out)
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n * n * d / best / 1e9


def machine_description(device: str = "cpu") -> list[str]:
    """Lines describing the machine and software the numbers were measured on."""
    import numpy
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = _meminfo_gib()
    lines = [f"CPU: {cpu}, {os.cpu_count()} logical cores, torch intra-op threads "
             f"{torch.get_num_threads()}" + (f", {mem:.0f} GiB RAM" if mem else ""),
             f"Python {platform.python_version()}, torch {torch.__version__}, numpy "
             f"{numpy.__version__}{_version('scipy')}{_version('sklearn', 'scikit-learn')}",
             f"OS: {platform.platform()}"]
    if str(device).startswith("cuda") and torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name(torch.device(device))}")
    return lines


def load_note() -> str:
    """The load average now, against the core count: numbers from a busy machine are
    pessimistic in wall time."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def _meminfo_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def _version(module: str, label: str | None = None) -> str:
    mod = sys.modules.get(module)
    if mod is None:
        try:
            mod = __import__(module)
        except ImportError:
            return ""
    return f", {label or module} {mod.__version__}"


# --------------------------------------------------------------------------- fits, tables


def growth_exponent(sizes, seconds, min_seconds: float = 0.02) -> float | None:
    """Least-squares slope of log(time) on log(size): time ~ size^slope.

    Points faster than ``min_seconds`` are left out (fixed costs dominate them); None when
    fewer than two points remain.
    """
    pts = [(math.log(s), math.log(t)) for s, t in zip(sizes, seconds)
           if t is not None and t >= min_seconds and s > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def markdown_table(headers, rows) -> str:
    """A GitHub-flavoured markdown table; numbers must already be formatted strings."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 100:
        return f"{s:.0f}"
    if s >= 1:
        return f"{s:.2f}"
    return f"{s:.3g}"


def fmt_mib(m: float | None) -> str:
    return "n/a" if m is None else f"{m:.0f}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    """``a / b`` as ``0.21x``; '-' when either is unknown or b is 0."""
    if a is None or b is None or b <= 0:
        return "-"
    return f"{a / b:.2f}x"
