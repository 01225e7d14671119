"""The result type every estimator returns, and its plain-Python (JSON) form."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

LN2 = math.log(2.0)


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
