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

Busy machines.  A parallel region whose cores are taken by other processes is slower than one
thread: torch's OpenMP threads spin-wait for each other while the scheduler hands their cores
to someone else.  So an estimator call (:func:`call_threads`) runs on
``min(torch's thread count, cores not busy)``, where the busy cores are the runnable tasks of
``/proc/loadavg`` other than this process's own (:func:`free_cores`), read at most every
``LOAD_CACHE_SECONDS``.  The count is only ever lowered, only for the call, and put back in
a ``finally``.  ``IBTOOLS_THREADS=torch`` turns this off (torch's setting is used as is).

Estimators whose numbers change in the last bits with the thread count (the trained critics
of the MINE family and DoE; Renyi's eigendecompositions) cannot follow the load without
their seeded value depending on it.  They declare ``fixed_threads = 1``: a call runs on
exactly one thread, whatever the caller's count and the machine's load, so the value is the
same everywhere and a busy machine never slows it.  Measured (RESULTS.md, threads section),
their work gains little or nothing from a second thread on a quiet machine (a small critic's
steps are slower on two) and loses many times over on a busy one.  With ``IBTOOLS_THREADS=torch``
they too run on torch's count as it is (a user's choice for a dedicated machine; the value
then depends on that count, still never on the load).  OpenMP's own remedy,
``OMP_WAIT_POLICY=passive``, must be in the environment before torch is imported, so a
library cannot apply it; users who start the interpreter may.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib
import os
import threading
import time

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


#: Seconds one reading of the machine's load is reused by later calls.
LOAD_CACHE_SECONDS = 0.5
THREAD_POLICIES = ("auto", "torch")
_LOAD_LOCK = threading.Lock()
_CALL_LOCK = threading.Lock()
_load = {"at": -float("inf"), "free": None}


def thread_policy() -> str:
    """``IBTOOLS_THREADS``: ``auto`` (default; fewer threads while other processes keep the
    cores busy) or ``torch`` (torch's thread count as it is)."""
    choice = os.environ.get("IBTOOLS_THREADS", "auto").strip().lower() or "auto"
    if choice not in THREAD_POLICIES:
        raise ValueError(f"IBTOOLS_THREADS={choice!r} is not accepted; use one of "
                         f"{list(THREAD_POLICIES)}")
    return choice


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def _task_stat_paths() -> list:
    return glob.glob("/proc/self/task/*/stat")


def _cores() -> int:
    """Cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def busy_elsewhere() -> int | None:
    """Runnable tasks on the machine that are not threads of this process, or None when
    ``/proc`` cannot say.

    ``/proc/loadavg``'s fourth field starts with the number of runnable tasks at the moment
    of reading, machine-wide, this process's own included (the reading thread at least, and
    any of its pool threads still spinning); those are counted from the state letter of
    ``/proc/self/task/*/stat`` and taken off.
    """
    try:
        running = int(_read_text("/proc/loadavg").split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None
    own = 0
    for path in _task_stat_paths():
        try:
            stat = _read_text(path)
        except OSError:  # the thread ended meanwhile
            continue
        # the state letter follows the command name, which is in parentheses and may hold
        # spaces or parentheses itself
        end = stat.rfind(")")
        own += end >= 0 and stat[end + 2:end + 3] == "R"
    return max(0, running - max(1, own))


def free_cores() -> int | None:
    """Cores not taken by other processes, at least 1, at most :func:`_cores`; None when
    ``/proc`` cannot say.  A reading is reused for ``LOAD_CACHE_SECONDS``."""
    with _LOAD_LOCK:
        now = time.monotonic()
        if now - _load["at"] >= LOAD_CACHE_SECONDS:
            busy = busy_elsewhere()
            machine = os.cpu_count() or _cores()
            free = None if busy is None else max(1, min(_cores(), machine - busy))
            _load.update(at=now, free=free)
        return _load["free"]


def call_threads_count(limit: int) -> int:
    """Threads for a call whose caller allows ``limit``: ``min(limit, free_cores())``, or
    ``limit`` when ``IBTOOLS_THREADS=torch`` or ``/proc`` cannot say.  Never above
    ``limit``."""
    limit = max(1, int(limit))
    if limit == 1 or thread_policy() == "torch":
        return limit
    free = free_cores()
    return limit if free is None else min(limit, free)


def check_fixed_threads(fixed) -> int | None:
    """``fixed`` as a thread count (an int >= 1) or None; a clear error otherwise."""
    if fixed is None:
        return None
    if isinstance(fixed, bool) or not isinstance(fixed, int) or fixed < 1:
        raise ValueError(f"fixed_threads={fixed!r} is not accepted; use None (follow the "
                         f"load) or a thread count, an int >= 1")
    return fixed


@contextlib.contextmanager
def call_threads(fixed: int | None = None):
    """Run the body on :func:`call_threads_count` torch threads, or on exactly ``fixed``
    threads when given (unless ``IBTOOLS_THREADS=torch``); yields the count used.

    Without ``fixed``, torch's thread count is lowered only when the machine is busier than
    the caller's limit allows.  With it, the count is ``fixed`` whatever the caller's setting
    and the load, so numbers that depend on the thread count do not depend on the machine.
    The value found on entry is put back on exit, exceptions included.  Thread
    safety: :func:`torch.set_num_threads` sets the calling thread's OpenMP count and the
    default that threads starting torch work later copy.  Reading and setting happen under
    a lock, and each call restores what its own thread had; but a Python thread that runs
    its first torch operation while another thread is inside this context starts from the
    lowered count.  Programs that start such threads during ibtools calls, or that need a
    fixed thread count, set ``IBTOOLS_THREADS=torch``.
    """
    fixed = check_fixed_threads(fixed)
    with _CALL_LOCK:
        found = torch.get_num_threads()
        if fixed is not None and thread_policy() != "torch":
            use = fixed
        else:
            use = call_threads_count(found)
        if use != found:
            torch.set_num_threads(use)
    try:
        yield use
    finally:
        if use != found:
            with _CALL_LOCK:
                torch.set_num_threads(found)


def follows_load(method):
    """Decorate an estimator's public method: the whole call, input preparation included,
    runs inside :func:`call_threads`: on the estimator's ``fixed_threads`` when it sets one,
    else on the load-aware count when its ``threads_follow_load`` is true; else as called."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        fixed = getattr(self, "fixed_threads", None)
        if fixed is None and not getattr(self, "threads_follow_load", False):
            return method(self, *args, **kwargs)
        with call_threads(fixed):
            return method(self, *args, **kwargs)
    return wrapper


def _prefer_workqueue(numba) -> None:
    """Select numba's ``workqueue`` threading layer if nobody chose one and none runs yet."""
    from numba.np.ufunc import parallel

    if numba.config.THREADING_LAYER == "default" and not parallel._is_initialized:
        numba.config.THREADING_LAYER = "workqueue"


@contextlib.contextmanager
def kernel_call():
    """Hold :data:`LOCK` and give numba's parallel loops the threads torch may use (fewer
    while other processes keep the cores busy: :func:`call_threads_count`), then put the
    calling thread's numba setting and torch's thread count back.  Yields numba's thread
    count."""
    import numba

    with LOCK:
        _prefer_workqueue(numba)
        torch_threads = torch.get_num_threads()
        before = numba.get_num_threads()
        numba.set_num_threads(max(1, min(call_threads_count(workers()),
                                         numba.config.NUMBA_NUM_THREADS)))
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
