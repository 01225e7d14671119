"""Bounds every mutual-information estimate must respect, checked after it is computed.

Whatever an estimator's model of the data, two ceilings hold exactly:

* a discrete variable caps the information about it at its entropy: I(X;Y) <= H(Y) when Y
  takes class ids (the Gaussian estimator once read 8 768 nats for a 50-class label, whose
  ceiling is ln 50 = 3.91);
* an estimator that works on the sample's empirical distribution (binning's histograms,
  KDE's mixture of n kernels, matrix-Renyi's n x n Gram matrices) cannot exceed ln n, the
  entropy of n equally likely rows, and neither can its interval.

A violation is a flag, and the value is *not* clipped: a number above its ceiling says the
estimator failed on this data, and clipping would hide that behind a plausible value.  An
interval's upper end is clipped to the ceiling (or to the value, when the value itself is
above it), since no value above the ceiling is possible.  ``details["mi_ceiling"]`` records the
tightest ceiling and what it is.
"""

from __future__ import annotations

import math

import torch

from ibtools.estimators.base import entropy_from_counts

#: Violations smaller than this (nats) are not failures: a consistent estimator at the
#: ceiling (well-separated classes) scatters around it by its own error.
TOLERANCE = 0.01


def label_entropy(codes: torch.Tensor) -> float:
    """Miller-Madow estimate of H of class ids: the plug-in entropy, which every plug-in MI
    respects, plus the (K-1)/(2n) bias correction, so corrected MI estimates respect it too."""
    counts = torch.bincount(codes.reshape(-1).cpu())
    return entropy_from_counts(counts, miller_madow=True)


def ceilings(n: int, discrete: dict, sample_bounded: bool) -> list[tuple[float, str]]:
    """(value, description) of each ceiling that holds; ``discrete`` maps the caller's name
    of each discrete variable ("x", "y") to its int64 codes."""
    out = [(label_entropy(codes), f"H({name})") for name, codes in discrete.items()]
    if sample_bounded and n > 1:
        out.append((math.log(n), f"ln n (n={n})"))
    return out


def check_ceilings(result, n: int, discrete: dict, sample_bounded: bool) -> None:
    """Flag ``result`` (an EstimateResult of I(X;Y)) when it exceeds a ceiling, and clip its
    interval's upper end; record the tightest ceiling in ``details["mi_ceiling"]``."""
    found = ceilings(n, discrete, sample_bounded)
    if not found:
        return
    limit, what = min(found)
    result.details["mi_ceiling"] = {"value": limit, "bound": what}
    if result.value > limit + TOLERANCE:
        result.flags.append(
            f"the estimate {result.value:.4g} nats exceeds {what} = {limit:.4g} nats, the most "
            f"any dependence can give here: the estimator's assumptions do not fit this data, "
            f"so the value is not a measurement (left unclipped so the failure shows); "
            f"compare method='auto' or another estimator")
    if result.ci is not None:
        low, high = result.ci
        cap = max(limit, result.value)
        if high > cap:
            result.ci = (min(low, cap), cap)
            result.details["ci_clipped_at"] = what
