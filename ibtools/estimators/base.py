"""Shared machinery of every estimator: input checks, the result type, devices, chunking,
intervals and the permutation null.

An estimator subclasses :class:`Estimator`, declares its settings in ``defaults`` and
implements ``_mi(x, y, x_discrete, y_discrete)`` and/or ``_entropy(x, discrete)`` on
prepared tensors (2-D, on the working device, in the working dtype, transformed).  The
public methods :meth:`Estimator.mutual_information` and :meth:`Estimator.entropy` do the
rest, so every estimator validates, times, flags and builds intervals the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ibtools.estimators.intervals import (
    CI_METHODS,
    bias_dominates,
    bias_flag,
    independence_flag,
    null_summary,
    resample_interval,
)
from ibtools.estimators.transforms import TRANSFORMS, apply_transform

LN2 = math.log(2.0)

#: Interval kinds an estimator may offer.  "subsample" (m-out-of-n) and "seeds" suit kNN
#: estimators, whose value a duplicated row would corrupt; "bootstrap" suits plug-in ones.
INTERVAL_KINDS = ("subsample", "seeds", "bootstrap")

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --------------------------------------------------------------------------- result type


@dataclass
class EstimateResult:
    """One estimate, in nats, with everything needed to judge it.

    Attributes
    ----------
    value : float
        The estimate in nats (natural log).  ``bits`` gives it in bits.
    quantity : str
        ``"mutual_information"`` or ``"entropy"``.
    method : str
        Estimator name (``"ksg"``, ``"kde"``, ...).
    params : dict
        The settings that produced it (plain Python values).
    n : int
        Number of samples (rows) used.
    dims : tuple of int
        Flattened dimension of each argument: ``(d_x, d_y)`` or ``(d_x,)``.
    seconds : float
        Wall time of the point estimate (intervals and null not included).
    ci : tuple of float or None
        ``(low, high)`` interval in nats when an interval was asked for.
    ci_kind : str or None
        How the interval was made (``"subsample"``, ``"seeds"``, ``"bootstrap"``, ...).
    flags : list of str
        Plain-language warnings the estimator raises about its own number.
    details : dict
        Estimator-specific numbers (bounds, clipped counts, ceilings, null distribution).
    """

    value: float
    quantity: str
    method: str
    params: dict
    n: int
    dims: tuple
    seconds: float
    ci: tuple | None = None
    ci_kind: str | None = None
    confidence: float | None = None
    flags: list = field(default_factory=list)
    details: dict = field(default_factory=dict)
    unit: str = "nats"

    @property
    def bits(self) -> float:
        """The value in bits."""
        return self.value / LN2

    @property
    def ci_bits(self) -> tuple | None:
        return None if self.ci is None else (self.ci[0] / LN2, self.ci[1] / LN2)

    def to_dict(self) -> dict:
        """Plain-Python form (JSON-serialisable)."""
        out = asdict(self)
        out["bits"] = self.bits
        out["dims"] = list(self.dims)
        out["ci"] = None if self.ci is None else list(self.ci)
        return _jsonable(out)

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        ci = "" if self.ci is None else f", ci=({self.ci[0]:.4f}, {self.ci[1]:.4f})"
        flags = f", flags={len(self.flags)}" if self.flags else ""
        return (f"EstimateResult({self.quantity}={self.value:.4f} nats ({self.bits:.4f} bits), "
                f"method={self.method!r}, n={self.n}, dims={tuple(self.dims)}{ci}{flags})")

    def _repr_html_(self) -> str:
        """Jupyter view: value (nats and bits), interval, method and settings, flags."""
        from ibtools.notebook import result_html

        return result_html(self)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, torch.dtype):
        return str(obj).replace("torch.", "")
    if isinstance(obj, torch.device):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


# --------------------------------------------------------------------------- input checks


def resolve_device(device, *arrays) -> torch.device:
    """``None``: the device of the first torch input (CPU for numpy); ``"auto"``: CUDA if
    available; anything else: ``torch.device(device)``."""
    if device is None:
        for a in arrays:
            if isinstance(a, torch.Tensor):
                return a.device
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    accepted = "use None (the inputs' device), 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"device={device!r} is not a device; {accepted}") from exc
    if dev.type not in ("cpu", "cuda", "mps"):  # meta, xla, ...: no data lives there
        raise ValueError(f"device={device!r} is not a device estimators run on; {accepted}")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device={device!r} asks for CUDA, but torch sees no CUDA device; "
                             f"use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device={device!r} asks for CUDA device {dev.index}, but torch "
                             f"sees {count} (cuda:0 to cuda:{count - 1})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} asks for Apple's MPS, which this torch cannot "
                         f"use here; use 'cpu' or 'auto'")
    return dev


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype={dtype!r} is not accepted; use 'float32' or 'float64'")


def to_numpy_or_tensor(a, name: str):
    """Accept numpy arrays, torch tensors, lists and pandas objects; return ndarray or Tensor."""
    if isinstance(a, torch.Tensor):
        return a.detach()
    if hasattr(a, "to_numpy"):  # pandas
        a = a.to_numpy()
    if isinstance(a, np.ndarray):
        return _from_object(a, name) if a.dtype == object else a
    if isinstance(a, (np.generic, int, float)):
        return np.asarray(a)
    if isinstance(a, (list, tuple)):
        try:
            arr = np.asarray(a)
        except ValueError as exc:
            raise ValueError(f"{name}: could not make an array of the given sequence ({exc})") from exc
        return _from_object(arr, name) if arr.dtype == object else arr
    raise TypeError(f"{name} must be a numpy array, torch tensor or list of rows; "
                    f"got {type(a).__name__}")


_REAL_SCALARS = (bool, int, float, np.bool_, np.integer, np.floating)


def _from_object(arr: np.ndarray, name: str) -> np.ndarray:
    """An object array (pandas columns, lists holding None) as the array it stands for:
    all strings -> str labels, all real numbers -> their numeric dtype; anything else is a
    TypeError naming the first offending element, since NumPy's own error names neither."""
    flat = arr.reshape(-1)
    is_str = [isinstance(v, str) for v in flat]
    is_real = [isinstance(v, _REAL_SCALARS) for v in flat]
    if all(is_str):
        return arr.astype(str)
    if all(is_real):
        out = np.array(flat.tolist()).reshape(arr.shape)
        return out.astype(np.float64) if out.dtype == object else out  # ints beyond int64
    if all(s or r for s, r in zip(is_str, is_real)):  # strings mixed with numbers
        bad = (is_str if sum(is_str) <= sum(is_real) else is_real).index(True)
    else:
        bad = next(i for i, (s, r) in enumerate(zip(is_str, is_real)) if not (s or r))
    where = np.unravel_index(bad, arr.shape)
    loc = ("its only element" if arr.ndim == 0 else f"row {where[0]}"
           + (f", column {', '.join(map(str, where[1:]))}" if arr.ndim > 1 else ""))
    shown = repr(flat[bad])
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise TypeError(f"{name} is an object array holding a {type(flat[bad]).__name__} value "
                    f"({shown}) at {loc}; estimators take arrays of only numbers (or bools) or "
                    f"only strings (class labels). Convert it, e.g. with .astype(float) or "
                    f".astype(str)")


def _is_integer_like(a) -> bool:
    if isinstance(a, torch.Tensor):
        return not (a.dtype.is_floating_point or a.dtype.is_complex)
    return a.dtype.kind in "biu"


def _rows(a) -> int:
    return int(a.shape[0]) if a.ndim > 0 else 0


def _describe_nonfinite(arr: np.ndarray, name: str) -> str | None:
    bad = ~np.isfinite(arr)
    count = int(bad.sum())
    if count == 0:
        return None
    nan = int(np.isnan(arr).sum())
    where = np.argwhere(bad)[0]
    loc = f"row {where[0]}" + (f", column {where[1]}" if arr.ndim > 1 else "")
    return (f"{name} has {count} non-finite value(s) ({nan} NaN, {count - nan} inf); "
            f"the first at {loc}. Remove or impute them before estimating.")


def encode_discrete(a, name: str, declared: bool) -> torch.Tensor:
    """Turn class ids (ints, bools, strings, integral floats when ``declared``) into int64
    codes 0..K-1 of shape (n,). Rows of several columns are treated as one joint symbol."""
    if isinstance(a, torch.Tensor):
        if a.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            a = a.float()
        arr = a.cpu().numpy()
    else:
        arr = np.asarray(a)
    if arr.ndim == 0:
        raise ValueError(f"{name} must have one row per sample; got a scalar")
    if arr.dtype.kind in "fc":
        if not np.all(np.isfinite(arr)):
            raise ValueError(_describe_nonfinite(arr.reshape(len(arr), -1), name))
        if not np.all(arr == np.round(arr)):
            sample = arr.reshape(-1)[~(arr.reshape(-1) == np.round(arr.reshape(-1)))][:3]
            raise TypeError(f"{name} was declared discrete but holds non-integer values such "
                            f"as {sample.tolist()}; discrete variables take integer class ids "
                            f"(or strings/bools), or declare it continuous")
        # integral floats stay floats: a cast to int64 would merge every id beyond 2**63
        # into one class; np.unique below codes float ids the same way as integer ones
    elif arr.dtype.kind not in "biuUSO":
        raise TypeError(f"{name}: dtype {arr.dtype} cannot be read as class ids")
    rows = arr.reshape(len(arr), -1)
    if rows.shape[1] == 1:
        _, codes = np.unique(rows[:, 0], return_inverse=True)
    else:
        _, codes = np.unique(rows, axis=0, return_inverse=True)
    return torch.as_tensor(codes.reshape(-1).astype(np.int64))


def prepare(a, name: str, *, discrete, device: torch.device, dtype: torch.dtype):
    """Validate one argument and return ``(tensor, is_discrete)``.

    Continuous: float tensor (n, d) on ``device``.  Discrete: int64 codes (n,) on ``device``.
    ``discrete=None`` decides from the dtype: integer, bool and string arrays of one column
    are discrete, floats are continuous.
    """
    a = to_numpy_or_tensor(a, name)
    if a.ndim == 0 or _rows(a) == 0:
        raise ValueError(f"{name} is empty (shape {tuple(a.shape)}); it needs one row per sample")
    if discrete not in (None, True, False):
        raise ValueError(f"discrete setting for {name} must be None (decide from dtype), True "
                         f"or False; got {discrete!r}")
    width = int(np.prod(a.shape[1:])) if a.ndim > 1 else 1
    if width == 0:
        raise ValueError(f"{name} has rows of size 0 (shape {tuple(a.shape)})")
    if isinstance(a, np.ndarray) and a.dtype.kind in "USO":
        if discrete is False:
            raise TypeError(f"{name} holds {a.dtype} values, which cannot be continuous")
        return encode_discrete(a, name, True).to(device), True
    is_discrete = discrete if discrete is not None else (_is_integer_like(a) and width == 1)
    if is_discrete:
        return encode_discrete(a, name, discrete is True).to(device), True
    t = torch.as_tensor(a) if isinstance(a, np.ndarray) else a
    if t.dtype.is_complex:
        raise TypeError(f"{name} is complex ({t.dtype}); estimators take real values")
    t = t.reshape(t.shape[0], -1).to(device=device, dtype=dtype)
    # aminmax propagates NaN and inf and is several times cheaper than isfinite().all()
    lo, hi = torch.aminmax(t)
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        raise ValueError(_describe_nonfinite(t.cpu().double().numpy(), name))
    return t, False


#: A float column read as continuous "looks like labels" when its values are integers and
#: take from 2 to this many distinct values, with at least LABEL_LIKE_ROWS rows per value.
LABEL_LIKE_MAX_VALUES, LABEL_LIKE_ROWS = 100, 5


def label_like_flag(t: torch.Tensor, name: str, declared) -> str | None:
    """A flag when an undeclared float column (``t`` as :func:`prepare` returns it) holds a
    few integer values, like class ids stored as float64 (0., 1., ..., 9.): read as
    continuous values, such labels can give another number than the same ids as int64
    (KDE read them as a deterministic map: 1.60 nats where the labels gave 0.88)."""
    if declared is not None or t.ndim != 2 or t.shape[1] != 1:
        return None
    col = t[:, 0]
    if not bool((col == torch.round(col)).all()):
        return None
    k = int(torch.unique(col).numel())
    if not 2 <= k <= min(LABEL_LIKE_MAX_VALUES, t.shape[0] // LABEL_LIKE_ROWS):
        return None
    return (f"{name} is a float column holding only {k} distinct integer values, read as a "
            f"continuous variable: if these are class labels, pass discrete_{name}=True (or "
            f"integer ids); as values they can give another number than as labels")


# --------------------------------------------------------------------------- chunking

_SIZE_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(budget, name: str = "memory_budget") -> int:
    """``268435456``, ``"256MiB"``, ``"1GB"`` -> bytes."""
    if isinstance(budget, (int, float)) and not isinstance(budget, bool) and budget > 0:
        return int(budget)
    if isinstance(budget, str):
        s = budget.strip().lower().replace(" ", "")
        for unit in sorted(_SIZE_UNITS, key=len, reverse=True):
            if s.endswith(unit):
                try:
                    val = float(s[: -len(unit)])
                except ValueError:
                    break
                if val > 0:
                    return int(val * _SIZE_UNITS[unit])
    raise ValueError(f"{name}={budget!r} is not a size; give bytes (int > 0) or a string such "
                     f"as '256MiB' or '2GB'")


def default_memory_budget(device: torch.device) -> int:
    """256 MiB of scratch per pairwise block on CPU; a quarter of free memory on CUDA."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(max(256 * 2**20, free // 4))
    return 256 * 2**20


def chunk_rows(n_rows: int, bytes_per_row: int, budget: int, minimum: int = 1) -> int:
    """Rows per block so that a block of ``bytes_per_row`` each fits in ``budget``."""
    rows = max(minimum, int(budget // max(1, bytes_per_row)))
    return int(min(n_rows, rows))


# --------------------------------------------------------------------------- estimator base

_COMMON_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": None,
    "dtype": "float32",
    "memory_budget": None,
    "ci": None,
    "n_resamples": 20,
    "confidence": 0.95,
    "n_permutations": "auto",
}


class Estimator:
    """Base class.  ``__init__`` stores and checks settings and does no work.

    Common settings (every estimator)
    ---------------------------------
    seed : int
        Seeds every random choice (tie-breaking noise, resamples, permutations, training).
    device : None, "auto", "cpu", "cuda[:N]"
        Where to compute; ``None`` is the device of the inputs (CPU for numpy).
    dtype : "float32" or "float64"
        Working precision of continuous inputs.
    memory_budget : int, str or None
        Scratch memory a pairwise block may use (``"512MiB"``); default 256 MiB on CPU and
        a quarter of free memory on CUDA.
    ci : None or str
        Interval kind: one of the estimator's ``interval_kinds`` (``"subsample"``,
        ``"seeds"``, ``"bootstrap"``) or ``"auto"`` for its preferred kind.
    n_resamples : int
        Resamples (or seeds) behind the interval.
    confidence : float
        Interval coverage, in (0, 1).
    n_permutations : int or "auto"
        If > 0, estimate the value under a permutation null (y rows shuffled) that many times
        and report its mean, spread, 95% quantile and a p-value in ``details["null"]``: the
        estimator's bias at independence; a p-value above 0.05 adds the flag "not
        distinguishable from independence".  ``"auto"`` (the default) runs the estimator's
        own small check (``auto_permutations`` shuffles, or :meth:`_independence_check`) when
        its value is positive and within reach of its bias at independence, and nothing
        for estimators too costly to rerun; ``0`` turns every check off.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict] = {}
    #: Interval kinds this estimator offers; the first is its "auto" choice.
    interval_kinds: ClassVar[tuple] = ("bootstrap",)
    #: Whether the ``transform`` setting applies (kNN, KDE, Gaussian).
    supports_transform: ClassVar[bool] = False
    #: Which (x_discrete, y_discrete) combinations ``_mi`` handles after the base has moved a
    #: discrete variable into the y slot.
    handles_discrete_x: ClassVar[bool] = False
    handles_entropy_of_discrete: ClassVar[bool] = False
    #: Whether seeds change the value (so "seeds" intervals make sense).
    stochastic: ClassVar[bool] = False
    #: Whether the estimate is a function of the sample's empirical distribution, so it
    #: cannot exceed ln n (see :mod:`ibtools.estimators.bounds`).
    bounded_by_sample_size: ClassVar[bool] = False
    #: Shuffles of the permutation null run by ``n_permutations="auto"``; 0 for estimators
    #: too costly to rerun that often (they may override :meth:`_independence_check`).
    auto_permutations: ClassVar[int] = 0

    def __init__(self, **settings):
        accepted = self.accepted_settings()
        unknown = sorted(set(settings) - set(accepted))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown setting(s) {unknown}; accepted "
                            f"settings are {sorted(accepted)}")
        merged = dict(accepted)
        merged.update(settings)
        self.settings = merged
        for key, value in merged.items():
            setattr(self, key, value)
        self._check_common()
        self._check_settings()

    # -- settings --------------------------------------------------------------------------

    @classmethod
    def accepted_settings(cls) -> dict:
        out = dict(_COMMON_DEFAULTS)
        if cls.supports_transform:
            out["transform"] = None
        for klass in reversed(cls.__mro__):
            out.update(getattr(klass, "defaults", {}) if "defaults" in vars(klass) else {})
        return out

    def _check_common(self) -> None:
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise TypeError(f"seed must be an int; got {self.seed!r}")
        resolve_dtype(self.dtype)
        if self.device is not None:
            resolve_device(self.device)
        if self.memory_budget is not None:
            parse_bytes(self.memory_budget)
        if self.ci is not None and self.ci != "auto" and self.ci not in self.interval_kinds:
            raise ValueError(f"ci={self.ci!r} is not offered by {type(self).__name__}; use None, "
                             f"'auto' or one of {list(self.interval_kinds)}")
        check_int(self.n_resamples, "n_resamples", minimum=2)
        if self.n_permutations != "auto":
            check_int(self.n_permutations, "n_permutations", minimum=0)
        if not (isinstance(self.confidence, (float, int)) and 0 < self.confidence < 1):
            raise ValueError(f"confidence={self.confidence!r} must be a number in (0, 1)")
        if self.supports_transform and self.transform not in TRANSFORMS:
            raise ValueError(f"transform={self.transform!r} is not accepted; use one of "
                             f"{list(TRANSFORMS)}")

    def _check_settings(self) -> None:
        """Estimator-specific checks; raise ValueError/TypeError naming the setting."""

    def get_params(self) -> dict:
        return dict(self.settings)

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.settings.items() if v != self.accepted_settings()[k]}
        inner = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"{type(self).__name__}({inner})"

    def _repr_html_(self) -> str:
        """Jupyter view: the class and every setting, changed ones in bold."""
        from ibtools.notebook import estimator_html

        return estimator_html(self)

    # -- hooks for subclasses -------------------------------------------------------------

    def _mi(self, x: torch.Tensor, y: torch.Tensor, x_discrete: bool, y_discrete: bool,
            rng: torch.Generator):
        """Return ``(value_nats, details: dict, flags: list[str])``."""
        raise TypeError(f"{type(self).__name__} does not estimate mutual information")

    def _entropy(self, x: torch.Tensor, discrete: bool, rng: torch.Generator):
        """Return ``(value_nats, details: dict, flags: list[str])``."""
        raise TypeError(f"{type(self).__name__} does not estimate entropy")

    def _min_samples(self) -> int:
        return 2

    def _user_name(self, slot: str) -> str:
        """The caller's name ("x" or "y") of the variable in ``slot`` of ``_mi``: a discrete x
        is moved into the y slot, and messages must name the argument the caller passed."""
        if getattr(self, "_swapped_arguments", False):
            return {"x": "y", "y": "x"}[slot]
        return slot

    # -- plumbing --------------------------------------------------------------------------

    @property
    def working_device(self) -> torch.device | None:
        return None if self.device is None else resolve_device(self.device)

    def _budget(self, device: torch.device) -> int:
        if self.memory_budget is None:
            return default_memory_budget(device)
        return parse_bytes(self.memory_budget)

    def _generator(self, device: torch.device, offset: int = 0) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(int(self.seed) + 1_000_003 * offset)
        return g

    def _transform(self, t: torch.Tensor, discrete: bool) -> torch.Tensor:
        if discrete or not self.supports_transform or self.transform is None:
            return t
        return apply_transform(t, self.transform)

    def _check_n(self, n: int) -> None:
        need = self._min_samples()
        if n < need:
            raise ValueError(f"n={n} samples is too few for {type(self).__name__} with these "
                             f"settings; it needs at least {need}")

    # -- public API ------------------------------------------------------------------------

    def mutual_information(self, x, y, *, discrete_x=None, discrete_y=None) -> EstimateResult:
        """Estimate I(X;Y) in nats.

        Parameters
        ----------
        x, y : array-like or Tensor, shape (n, ...)
            Paired samples, one row each; trailing dimensions are flattened.
        discrete_x, discrete_y : bool or None
            Whether the variable is discrete (class or token ids).  ``None`` decides from the
            dtype: integer/bool/string columns are discrete, floats continuous.
        """
        x0 = to_numpy_or_tensor(x, "x")
        y0 = to_numpy_or_tensor(y, "y")
        device = self.working_device or resolve_device(None, x0, y0)
        dtype = resolve_dtype(self.dtype)
        xt, xd = prepare(x0, "x", discrete=discrete_x, device=device, dtype=dtype)
        yt, yd = prepare(y0, "y", discrete=discrete_y, device=device, dtype=dtype)
        notes = [f for f in (label_like_flag(xt, "x", discrete_x),
                             label_like_flag(yt, "y", discrete_y)) if f]
        if xt.shape[0] != yt.shape[0]:
            raise ValueError(f"x and y must have the same number of rows (samples); got "
                             f"x: {xt.shape[0]} and y: {yt.shape[0]}")
        n = int(xt.shape[0])
        self._check_n(n)
        dims = (1 if xd else int(xt.shape[1]), 1 if yd else int(yt.shape[1]))
        swapped = False
        if xd and not yd:  # MI is symmetric: keep a discrete variable in the y slot
            xt, yt, xd, yd, swapped = yt, xt, yd, xd, True
        self._swapped_arguments = swapped  # read by _user_name for messages
        if xd and yd and not self.handles_discrete_x:
            raise ValueError(f"method {self.name!r} needs at least one continuous variable; both "
                             f"x and y are discrete here. Use method='binning' (plug-in), or pass "
                             f"discrete_x=False / discrete_y=False if a variable is continuous")
        xt = self._transform(xt, xd)
        yt = self._transform(yt, yd)

        def run(xs, ys, offset):
            return self._mi(xs, ys, xd, yd, self._generator(device, offset))

        result = self._finish("mutual_information", run, (xt, yt), n, dims, device,
                              extra={"swapped_arguments": swapped} if swapped else {})
        result.flags.extend(notes)
        from ibtools.estimators.bounds import check_ceilings

        discrete = {self._user_name(slot): t for slot, t, d in (("x", xt, xd), ("y", yt, yd))
                    if d}
        check_ceilings(result, n, discrete, self.bounded_by_sample_size)
        return result

    def entropy(self, x, *, discrete=None) -> EstimateResult:
        """Estimate the entropy H(X) (differential for continuous X) in nats."""
        x0 = to_numpy_or_tensor(x, "x")
        device = self.working_device or resolve_device(None, x0)
        xt, xd = prepare(x0, "x", discrete=discrete, device=device, dtype=resolve_dtype(self.dtype))
        if xd and not self.handles_entropy_of_discrete:
            raise ValueError(f"method {self.name!r} estimates differential entropy of continuous "
                             f"data; x is discrete (integer ids). Use method='binning', or pass "
                             f"discrete=False")
        n = int(xt.shape[0])
        self._check_n(n)
        xt = self._transform(xt, xd)

        def run(xs, offset):
            return self._entropy(xs, xd, self._generator(device, offset))

        return self._finish("entropy", run, (xt,), n, (1 if xd else int(xt.shape[1]),), device)

    def _finish(self, quantity, run, tensors, n, dims, device, extra=None) -> EstimateResult:
        start = time.perf_counter()
        value, details, flags = run(*tensors, 0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        details = dict(details)
        details.update(extra or {})
        flags = list(flags)
        value = float(value)
        if not math.isfinite(value):
            raise RuntimeError(f"{type(self).__name__} produced a non-finite value ({value}); "
                               f"details: {details}")
        result = EstimateResult(value=value, quantity=quantity, method=self.name,
                                params=_jsonable(self.get_params()), n=n, dims=tuple(dims),
                                seconds=seconds, flags=flags, details=details)
        if self.ci is not None:
            self._attach_interval(result, run, tensors, device)
        if quantity == "mutual_information":
            self._attach_null(result, run, tensors, device)
        return result

    def _attach_interval(self, result, run, tensors, device) -> None:
        """Interval, ``ci_method`` and bias details; it always contains the value."""
        kind = self.interval_kinds[0] if self.ci == "auto" else self.ci
        out = self._interval(kind, run, tensors, result.n, result.value, device)
        low, high, samples = out[:3]
        if low is None:  # resamples of the base kinds: build the interval from them
            rows = out[3]["resample_rows"]
            low, high, info = resample_interval(
                kind, result.value, samples, float(self.confidence), n=result.n,
                rows_point=int(result.details.get("rows_used", result.n)),
                rows_resample=min(rows) if kind == "subsample" else None)
        else:
            info = {"ci_method": CI_METHODS.get(kind, kind)}
        low, high = min(float(low), result.value), max(float(high), result.value)
        result.ci, result.ci_kind, result.confidence = (low, high), kind, float(self.confidence)
        result.details["resample_values"] = samples
        result.details.update(info)
        result.flags.extend(self._interval_flags(result, info))

    def _interval_flags(self, result, info) -> list:
        """Flags about what the interval means; by default, that it is of the estimator's
        value when the bias the resamples reveal exceeds their spread."""
        return [bias_flag(info, result.n, result.quantity)] if bias_dominates(info) else []

    def _attach_null(self, result, run, tensors, device) -> None:
        """The permutation null (``n_permutations`` > 0) or the automatic check."""
        if self.n_permutations == "auto":
            if result.value > 0:
                check = self._independence_check(run, tensors, result, device)
                if check is not None:
                    result.details["null"] = check
        elif self.n_permutations:
            result.details["null"] = self._permutation_null(run, tensors, result.value, device,
                                                            self.n_permutations)
        null = result.details.get("null")
        if null is not None and null["p_value"] > 0.05 and result.value > 0:
            result.flags.append(independence_flag(null, null.get("statistic", "the value "
                                                                  "under shuffled pairs")))

    def _independence_check(self, run, tensors, result, device) -> dict | None:
        """The ``n_permutations="auto"`` check: ``auto_permutations`` shuffles when
        :meth:`_null_needed` says the value is within reach of the bias at independence."""
        if not self.auto_permutations or not self._null_needed(result):
            return None
        null = self._permutation_null(run, tensors, result.value, device,
                                      self.auto_permutations)
        null["automatic"] = True
        return null

    def _null_needed(self, result) -> bool:
        """Whether the value could come from independent data (default: always)."""
        return True

    # -- intervals and null ---------------------------------------------------------------

    def _interval(self, kind, run, tensors, n, value, device):
        """``(None, None, resampled values, {"resample_rows": [...]})``: the estimates on
        ``n_resamples`` resamples and the rows each used; :meth:`_attach_interval` turns
        them into the interval (:mod:`ibtools.estimators.intervals`).  An override for a
        kind of its own returns ``(low, high, values)`` instead."""
        g = torch.Generator(device="cpu")
        g.manual_seed(int(self.seed) + 7919)
        samples, rows = [], []
        if kind not in ("seeds", "bootstrap", "subsample"):
            raise ValueError(f"unknown interval kind {kind!r}")
        m = max(self._min_samples() + 1, n // 2)
        if kind == "subsample" and m >= n:
            raise ValueError(f"n={n} is too small for a subsampling interval")
        for b in range(1, self.n_resamples + 1):
            if kind == "seeds":
                parts = tensors
            elif kind == "bootstrap":
                idx = torch.randint(0, n, (n,), generator=g).to(device)
                parts = [t[idx] for t in tensors]
            else:
                idx = torch.randperm(n, generator=g)[:m].to(device)
                parts = [t[idx] for t in tensors]
            out = run(*parts, b)
            samples.append(float(out[0]))
            rows.append(int(out[1].get("rows_used", parts[0].shape[0])))
        return None, None, samples, {"resample_rows": rows}

    def _permutation_null(self, run, tensors, value, device, count):
        """``count`` values with y's rows shuffled (same shuffles for every estimator)."""
        x, y = tensors
        g = torch.Generator(device="cpu")
        g.manual_seed(int(self.seed) + 104729)
        perms = [torch.randperm(y.shape[0], generator=g).to(device) for _ in range(count)]
        return null_summary(self._null_values(run, x, y, perms), value)

    def _null_values(self, run, x, y, perms) -> list:
        """The estimate on ``(x, y[perm])`` for each shuffle; estimators that can reuse
        work across shuffles (binning's symbols) override this."""
        return [float(run(x, y[perm], 10_000 + b)[0]) for b, perm in enumerate(perms, 1)]


# --------------------------------------------------------------------------- small checks


def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer; got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value} is too small; it must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value} is too large; it must be <= {maximum}")
    return int(value)


def check_positive(value, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number; got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} must be a finite number {kind}")
    return float(value)


def check_choice(value, name: str, choices) -> Any:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not accepted; use one of {list(choices)}")
    return value


def entropy_from_counts(counts: torch.Tensor, miller_madow: bool = False) -> float:
    """Plug-in entropy (nats) of a histogram; Miller-Madow adds (K-1)/(2n)."""
    counts = counts[counts > 0].to(torch.float64)
    n = counts.sum()
    p = counts / n
    h = float(-(p * torch.log(p)).sum())
    if miller_madow:
        h += (int(counts.numel()) - 1) / (2.0 * float(n))
    return h
