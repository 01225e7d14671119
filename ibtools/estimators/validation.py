"""Input checks shared by every estimator: arrays in, validated tensors out, and the small
checks of settings (each error names the argument, the bad value and what is accepted)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ibtools.errors import EstimatorRefused, InputError, InputTypeError


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
            raise InputError(f"{name}: could not make an array of the given sequence ({exc})") from exc
        return _from_object(arr, name) if arr.dtype == object else arr
    raise InputTypeError(f"{name} must be a numpy array, torch tensor or list of rows; "
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
    raise InputTypeError(f"{name} is an object array holding a {type(flat[bad]).__name__} value "
                         f"({shown}) at {loc}; estimators take arrays of only numbers (or "
                         f"bools) or "
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
        raise InputError(f"{name} must have one row per sample; got a scalar")
    if arr.dtype.kind in "fc":
        if not np.all(np.isfinite(arr)):
            raise EstimatorRefused(_describe_nonfinite(arr.reshape(len(arr), -1), name))
        if not np.all(arr == np.round(arr)):
            sample = arr.reshape(-1)[~(arr.reshape(-1) == np.round(arr.reshape(-1)))][:3]
            raise InputTypeError(f"{name} was declared discrete but holds non-integer values such "
                                 f"as {sample.tolist()}; discrete variables take integer class ids "
                                 f"(or strings/bools), or declare it continuous")
        # integral floats stay floats: a cast to int64 would merge every id beyond 2**63
        # into one class; np.unique below codes float ids the same way as integer ones
    elif arr.dtype.kind not in "biuUSO":
        raise InputTypeError(f"{name}: dtype {arr.dtype} cannot be read as class ids")
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
        raise InputError(f"{name} is empty (shape {tuple(a.shape)}); it needs one row per sample")
    if discrete not in (None, True, False):
        raise InputError(f"discrete setting for {name} must be None (decide from dtype), True "
                         f"or False; got {discrete!r}")
    width = int(np.prod(a.shape[1:])) if a.ndim > 1 else 1
    if width == 0:
        raise InputError(f"{name} has rows of size 0 (shape {tuple(a.shape)})")
    if isinstance(a, np.ndarray) and a.dtype.kind in "USO":
        if discrete is False:
            raise InputTypeError(f"{name} holds {a.dtype} values, which cannot be continuous")
        return encode_discrete(a, name, True).to(device), True
    is_discrete = discrete if discrete is not None else (_is_integer_like(a) and width == 1)
    if is_discrete:
        return encode_discrete(a, name, discrete is True).to(device), True
    t = torch.as_tensor(a) if isinstance(a, np.ndarray) else a
    if t.dtype.is_complex:
        raise InputTypeError(f"{name} is complex ({t.dtype}); estimators take real values")
    t = t.reshape(t.shape[0], -1).to(device=device, dtype=dtype)
    # aminmax propagates NaN and inf and is several times cheaper than isfinite().all()
    lo, hi = torch.aminmax(t)
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        raise EstimatorRefused(_describe_nonfinite(t.cpu().double().numpy(), name))
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


def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{name} must be an integer; got {value!r}")
    if minimum is not None and value < minimum:
        raise InputError(f"{name}={value} is too small; it must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise InputError(f"{name}={value} is too large; it must be <= {maximum}")
    return int(value)


def check_positive(value, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputTypeError(f"{name} must be a number; got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = ">= 0" if allow_zero else "> 0"
        raise InputError(f"{name}={value!r} must be a finite number {kind}")
    return float(value)


def check_choice(value, name: str, choices) -> Any:
    if value not in choices:
        raise InputError(f"{name}={value!r} is not accepted; use one of {list(choices)}")
    return value
