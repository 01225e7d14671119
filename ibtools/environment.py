"""What machine and software produced a result: hardware, instruction set, versions, threads.

Every ibtools run records this next to its numbers (``config.json`` of ``analyze`` and of
the tracker, and the study examples' outputs) because the numbers can depend on it: the
same code and seeds can train a different network when torch dispatches its CPU kernels to
another vector instruction set (AVX2 against AVX-512 changes the rounding of reductions),
and the thread count changes the order of floating-point sums.  A result without its
environment cannot be reproduced or even compared.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

__all__ = ["LIBRARIES", "describe_environment", "environment_lines"]

#: Packages whose versions every record carries (``None`` when one is not installed).
LIBRARIES = ("ibtools", "torch", "numpy", "scipy", "numba", "pandas")

#: Environment variables that change which kernels run or how many threads they use.
_VARIABLES = ("ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "NUMBA_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    """The CPU's marketing name: /proc/cpuinfo on Linux, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _numpy_simd() -> dict:
    """NumPy's compiled-in SIMD baseline and the dispatched extensions this CPU runs."""
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # NumPy 1.x
        try:
            from numpy.core import _multiarray_umath as umath
        except ImportError:
            return {}
    features = getattr(umath, "__cpu_features__", {})
    return {"baseline": list(getattr(umath, "__cpu_baseline__", [])),
            "dispatched": [f for f in getattr(umath, "__cpu_dispatch__", []) if features.get(f)]}


def _gpus(torch) -> list[str]:
    try:
        if torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken driver must not stop a run from recording the rest
        return []
    return []


def describe_environment(device=None) -> dict:
    """Describe the hardware and software a run executes on, as a JSON-ready dict.

    Parameters
    ----------
    device : str or torch.device, optional
        The device the run computes on; recorded as given (``None``: not recorded).

    Returns
    -------
    dict
        ``device``; ``cpu_model``, ``cpu_count`` (logical cores the OS reports),
        ``cpu_affinity`` (cores this process may use, where the OS tells);
        ``machine`` and ``platform`` (OS and architecture), ``python``;
        ``torch_cpu_capability`` (the instruction set torch dispatches its CPU kernels to,
        e.g. ``"AVX512"`` or ``"AVX2"``; it follows ``ATEN_CPU_CAPABILITY``) and
        ``numpy_simd`` (NumPy's SIMD baseline and dispatched extensions);
        ``gpus`` (CUDA device names, empty without one) and ``cuda`` (torch's CUDA version);
        ``threads`` (torch intra-op and inter-op threads, numba's threads when numba is
        loaded); ``versions`` (:data:`LIBRARIES`); ``variables`` (the set ones among the
        environment variables that select kernels or thread counts).

    Notes
    -----
    Reading the record imports nothing new except torch: numba's thread count is read only
    when numba is already loaded, so describing the environment never slows a run that does
    not use it.  No clock is read, so two runs on one machine record equal dicts.
    """
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    threads = {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads()}
    numba = sys.modules.get("numba")
    if numba is not None:
        try:
            threads["numba"] = int(numba.get_num_threads())
        except Exception:  # numba without a threading layer
            threads["numba"] = None
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # torch < 2.1
        capability = None
    return {
        "device": None if device is None else str(device),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_cpu_capability": capability,
        "numpy_simd": _numpy_simd(),
        "gpus": _gpus(torch),
        "cuda": torch.version.cuda,
        "threads": threads,
        "versions": {name: _version(name) for name in LIBRARIES},
        "variables": {k: os.environ[k] for k in _VARIABLES if k in os.environ},
    }


def environment_lines(env: dict) -> list[str]:
    """A record of :func:`describe_environment` as short ``name: value`` lines for a report."""
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
    simd = env.get("numpy_simd") or {}
    threads = ", ".join(f"{k} {v}" for k, v in env.get("threads", {}).items())
    return [f"CPU: {env.get('cpu_model')} ({env.get('cpu_count')} logical cores, "
            f"{env.get('cpu_affinity')} usable)",
            f"instruction set: torch {env.get('torch_cpu_capability')}; numpy baseline "
            f"{'/'.join(simd.get('baseline', [])) or '?'}, dispatched "
            f"{'/'.join(simd.get('dispatched', [])) or 'none'}",
            f"GPU: {', '.join(env.get('gpus') or []) or 'none'}",
            f"threads: {threads}",
            f"versions: {versions}",
            f"platform: {env.get('platform')}, Python {env.get('python')}"]
