"""What the optional numba kernels share: loading with a fallback, one lock, the threads.

Threads.  numba's default choice of threading layer on Linux is OpenMP through the system's
libgomp, a second OpenMP runtime beside the one torch ships; starting it resets the process's
OpenMP thread count, which raised a caller's ``torch.set_num_threads(1)`` (or
``OMP_NUM_THREADS=1``) to every core, and two spin-waiting runtimes slow each other on a
shared machine.  So ibtools asks numba for its own ``workqueue`` layer (plain worker threads,
no OpenMP), unless the user chose a layer (``NUMBA_THREADING_LAYER``) or one is already
running; and every kernel call gives torch's thread count back as it found it.  The kernels
use as many threads as torch may (:func:`workers`), so the caller's limit holds for both.

Kernels live in ``_kdtree_numba`` (the kNN estimators' k-d tree), ``_brute_numba`` (their
brute-force statistics) and ``_kde_numba`` (KDE's fused pass); they are used when numba is
installed (``pip install "ibtools[fast]"``), and otherwise, or when they cannot load, the
pure torch / scipy paths give the same numbers.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading

import torch

#: numba's default "workqueue" threading layer aborts the process if two Python threads run
#: parallel numba code at once; every parallel kernel call takes this lock.
LOCK = threading.Lock()
_import = importlib.import_module  # tests replace it to simulate a kernel that cannot load


class Compiled:
    """One kernel module, ``ibtools.estimators.<name>``, loaded on first use.

    :meth:`module` returns it, or None when it cannot load: ImportError without numba,
    RuntimeError when numba finds no writable folder for its on-disk cache (read-only
    site-packages and home); :attr:`error` then says why.  The outcome is kept.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.error = ""
        self._module = None  # None: not tried yet; False: failed

    def module(self):
        if self._module is None:
            try:
                self._module = _import(f"ibtools.estimators.{self.name}")
            except Exception as exc:  # noqa: BLE001 - any failure means: use the fallback
                self._module, self.error = False, f"{type(exc).__name__}: {exc}"
        return self._module or None


def workers() -> int:
    """Threads a kernel may use: torch's setting, at most the machine's cores."""
    return max(1, min(os.cpu_count() or 1, torch.get_num_threads()))


def _prefer_workqueue(numba) -> None:
    """Select numba's ``workqueue`` threading layer if nobody chose one and none runs yet."""
    from numba.np.ufunc import parallel

    if numba.config.THREADING_LAYER == "default" and not parallel._is_initialized:
        numba.config.THREADING_LAYER = "workqueue"


@contextlib.contextmanager
def kernel_call():
    """Hold :data:`LOCK` and give numba's parallel loops the threads torch may use, then put
    the calling thread's numba setting and torch's thread count back.  Yields numba's
    thread count."""
    import numba

    with LOCK:
        _prefer_workqueue(numba)
        torch_threads = torch.get_num_threads()
        before = numba.get_num_threads()
        numba.set_num_threads(max(1, min(workers(), numba.config.NUMBA_NUM_THREADS)))
        try:
            yield numba.get_num_threads()
        finally:
            numba.set_num_threads(before)
            if torch.get_num_threads() != torch_threads:
                torch.set_num_threads(torch_threads)


def choose(variable: str, fallback: str, kernels: Compiled, eligible: bool = True,
           n: int | None = None, min_n: int = 0) -> str:
    """Resolve the engine a kernel runs on: ``"numba"`` or ``fallback``.

    The environment variable ``variable`` says ``auto`` (default), ``numba`` or
    ``fallback``.  ``auto`` takes numba when ``eligible`` (the device and dtype the compiled
    kernel handles), the kernel loads, and ``n >= min_n`` (below, a call is fast either way
    and a fresh install would first spend seconds compiling).  ``numba`` insists, with an
    ImportError saying why ``kernels`` cannot load; it still gives way when not
    ``eligible``.
    """
    allowed = ("auto", "numba", fallback)
    choice = os.environ.get(variable, "auto").strip().lower() or "auto"
    if choice not in allowed:
        raise ValueError(f"{variable}={choice!r} is not accepted; use one of {list(allowed)}")
    if choice == fallback or not eligible:
        return fallback
    if choice == "numba":
        if kernels.module() is None:
            raise ImportError(f"{variable}=numba, but the numba kernel cannot be loaded "
                              f"({kernels.error}); pip install 'ibtools[fast]', or unset the "
                              f"variable")
        return "numba"
    if n is not None and n < min_n:
        return fallback
    return "numba" if kernels.module() is not None else fallback
