"""A check of the assumption behind the deterministic-map reading of I(X;T).

KDE's ``mutual_information(X, T, deterministic=True)`` returns H(T+Z) - H(Z), which is
I(X; T+Z) only when T is a function of X.  That cannot be verified from a sample in
general, but one contradiction can: equal rows of X paired with different rows of T (a
constant X with a varying T, say, which reads the same as the real X would).
"""

from __future__ import annotations

import torch


def not_a_function_flag(x: torch.Tensor, t: torch.Tensor) -> list:
    """A flag when equal rows of x come with different rows of t, which contradicts
    ``deterministic=True`` (a constant x with a varying t, say).  Rows are grouped by a
    fixed random projection (O(n d)), and a group's rows are then compared exactly."""
    n = int(x.shape[0])
    gen = torch.Generator(device="cpu").manual_seed(0)
    proj = torch.randn(int(x.shape[1]), 1, generator=gen).to(device=x.device, dtype=x.dtype)
    _, group, counts = torch.unique(x @ proj, return_inverse=True, return_counts=True)
    if int(counts.max()) < 2:
        return []
    group = group.reshape(-1)
    rows = torch.arange(n, device=x.device)
    first = torch.full((len(counts),), n, device=x.device).scatter_reduce(0, group, rows, "amin")
    lead = first[group]
    bad = int(((x == x[lead]).all(dim=1) & (t != t[lead]).any(dim=1)).sum())
    if not bad:
        return []
    return [f"deterministic=True, but {bad} of {n} rows of T differ from another row with the "
            f"same x: T is not a function of x here, so the value (H(T+Z) - H(Z)) is not "
            f"I(X; T+Z); use method='ksg' or method='auto'"]
