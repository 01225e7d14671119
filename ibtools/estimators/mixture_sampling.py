"""Monte Carlo draws for the entropy of a Gaussian mixture: exponents, and how many draws.

:class:`~ibtools.estimators.mixture.MixtureEntropy` integrates ``ln p`` of the mixture
``p = 1/n sum_i N(t_i, s2 I)`` over draws ``t_c + z``.  Here: the exponents of one block of
draws against every centre (:class:`MixtureExponents`, one matmul), their log-sum-exp
(:func:`pointwise_mi_`), and the two-stage design that says which centres get how many
draws and what standard error the mean of the draws has (:class:`TwoStageDesign`,
:func:`run_design`).
"""

from __future__ import annotations

import math

import torch

from ibtools.estimators.kde import _MATMUL_TOLERANCE, _matmul_dtype

#: Centres (with two draws each) of the first round of ``n_mc="auto"``.
PILOT_CENTRES = 512
#: Rounds of ``n_mc="auto"``: a pilot, then at most this many corrections of the design.
_MAX_ROUNDS = 4
#: Noise vectors per block on CPU.  Unlike KDE's blocks these are not sized to the cache:
#: the matmul of a block runs faster on taller ones.  Measured (one thread, n = 10 000,
#: 8000 vectors, seconds by rows 66 / 128 / 256 / 512 / 1024): d = 64: 1.39 / 1.20 / 1.15 /
#: 1.29 / 1.85; d = 512: 6.69 / 5.84 / 4.64 / 4.51 / 4.77.
CPU_ROWS = 512
#: Margin on the planned number of draws (the pilot's variances are themselves estimates).
_PLAN_MARGIN = 1.15


class MixtureExponents:
    """The centres of one mixture, prepared for exponents ``-||u - t_j||^2 / (2 s2)``.

    For a draw ``u = t_c + z`` the row ``u . (t_j / s2) - |t_j|^2 / (2 s2)`` is, up to a
    term that is the same for every j, that exponent; subtracting the entry of the draw's
    own centre c gives ``e_j = (||u - t_c||^2 - ||u - t_j||^2) / (2 s2)``, exactly 0 at
    j = c.  One matmul with the augmented centres ``[t_j / s2, -|t_j|^2 / (2 s2)]`` gives
    the rows; the centres are centred first (exponent differences do not change, rounding
    shrinks with the norms), and the matmul runs in float64 when float32 rounding could
    move an exponent by more than ``tolerance`` (a tenth of the Monte Carlo error allowed:
    a systematic error that small is lost in the random one; see :func:`kde._matmul_dtype`).
    """

    def __init__(self, t: torch.Tensor, noise_var: float, tolerance: float):
        self.t = t - t.mean(dim=0, keepdim=True)
        n, d = int(t.shape[0]), int(t.shape[1])
        # an entry u . t_j / s2 - |t_j|^2 / (2 s2) rounds by about eps (|u| |t_j| + |t_j|^2
        # / 2) / s2, and |u| <= |t_c| + |z| with |z| / sqrt(s2) below sqrt(d) + 4 but for
        # one draw in about 10^7; widened when 4 eps times this exceeds ``tolerance``
        # (_matmul_dtype's own tolerance is kde._MATMUL_TOLERANCE, hence the rescaling)
        top = math.sqrt(float((self.t * self.t).sum(dim=1).max()))
        reach = (top + math.sqrt(noise_var) * (math.sqrt(d) + 4.0) + 0.5 * top) * top
        self.mm_dtype = _matmul_dtype(t.dtype, t.device,
                                      reach / noise_var * _MATMUL_TOLERANCE / tolerance)
        tw = self.t.to(self.mm_dtype)
        sq = (tw * tw).sum(dim=1, keepdim=True)
        self.right = torch.cat([tw / noise_var, -sq / (2.0 * noise_var)], dim=1).T.contiguous()
        self.n, self.d = n, d

    def exponents(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``e`` of shape (b, n) for draws ``t_c + z`` (float64 if the matmul is)."""
        u = self.t[c].to(self.mm_dtype) + z.to(self.mm_dtype)
        ones = torch.ones(u.shape[0], 1, dtype=self.mm_dtype, device=u.device)
        rows = torch.cat([u, ones], dim=1) @ self.right                   # (b, n)
        return rows.sub_(rows.gather(1, c[:, None]))


#: Shifted exponents are clamped here before ``exp``: e^-85 ~ 1e-37 is nothing next to the
#: row's largest term e^0, and below about -87 float32 goes denormal, which makes the
#: vectorised exponential an order of magnitude slower (see kde._MIN_EXPONENT).
MIN_SHIFTED = -85.0


def shifted_kernel_(e: torch.Tensor):
    """``exp(e - max)`` row-wise, in place, and the (b, 1) maxima."""
    top = e.amax(dim=1, keepdim=True)
    return e.sub_(top).clamp_(min=MIN_SHIFTED).exp_(), top


def pointwise_mi_(e: torch.Tensor, log_n: float) -> torch.Tensor:
    """``ln N(z) - ln p(t_c + z)`` per draw: ln n minus a row's log-sum-exp (e is spent)."""
    k, top = shifted_kernel_(e)
    return log_n - (k.sum(dim=1).to(torch.float64).log_() + top[:, 0].to(torch.float64))


class TwoStageDesign:
    """Which centres were drawn how often, and the per-centre sums of each column.

    Centres are taken in a random ``order``: the first m, each with ``counts[c]`` draws.
    Two designs occur.  Part of the centres (m < n), two draws each: with ``f = m / n``,
    ``s_b^2`` the spread of the centres' means and ``s_w^2`` the mean within-centre
    variance, the standard error of the grand mean is (Cochran, two-stage sampling)
    ``se^2 = (1 - f) s_b^2 / m + f s_w^2 / (2 m)``, unbiased.  Every centre (m = n), r_c
    draws on centre c: the spread between centres costs nothing, ``se^2 = s_w^2 sum_c
    (1 / r_c) / n^2``, with ``s_w^2`` from the centres drawn at least twice (at least the
    first ``min(n, PILOT_CENTRES)``, a random subset).
    """

    def __init__(self, n: int, columns: int, order: torch.Tensor):
        self.n, self.m, self.order = n, 0, order
        self.sums = torch.zeros(columns, n, dtype=torch.float64, device=order.device)
        self.squares = torch.zeros_like(self.sums)
        self.counts = torch.zeros(n, dtype=torch.int64, device=order.device)

    @property
    def draws(self) -> int:
        return int(self.counts.sum())

    def add(self, centres: torch.Tensor, values: torch.Tensor) -> None:
        """Add (columns, b) per-draw values of draws made at ``centres`` (b,)."""
        self.sums.index_add_(1, centres, values)
        self.squares.index_add_(1, centres, values * values)
        self.counts.index_add_(0, centres, torch.ones_like(centres))

    def extend(self, m: int, r: int, block: int, draw) -> None:
        """Bring each of the first m centres of the order to at least r draws, drawing in
        blocks of ``block`` (``draw(c)`` gives the (columns, b) values at centres c)."""
        centres = self.order[:max(m, self.m)]
        more = (r - self.counts[centres]).clamp_(min=0)
        self.m = max(m, self.m)
        c_all = centres.repeat_interleave(more)
        for i0 in range(0, int(c_all.numel()), block):
            c = c_all[i0:i0 + block]
            self.add(c, draw(c))

    def stats(self):
        """(mean, se, s_b^2, s_w^2) per column, as float64 tensors of shape (columns,)."""
        used = self.order[:self.m]
        r = self.counts[used].to(torch.float64)
        sums, squares = self.sums[:, used], self.squares[:, used]
        means = sums / r
        multi = r >= 2
        within = ((squares[:, multi] - sums[:, multi] * means[:, multi]) / (r[multi] - 1))
        within = within.clamp_(min=0.0).mean(dim=1)
        between = means.var(dim=1) if self.m > 1 else torch.zeros_like(within)
        if self.m < self.n:
            f = self.m / self.n
            var = (1.0 - f) * between / self.m + f * within / (2.0 * self.m)
        else:
            var = within * float((1.0 / r).sum()) / self.n ** 2
        return means.mean(dim=1), var.sqrt(), between, within


def run_design(n: int, columns: int, draw, *, rng: torch.Generator, device: torch.device,
               n_mc, tolerance: float, max_mc: int, block: int,
               watch: tuple = (0,)) -> TwoStageDesign:
    """Draw per ``n_mc`` (an int, or ``"auto"``: to a standard error of ``tolerance`` on
    each column in ``watch``).

    ``draw(c)`` gives the (columns, b) per-draw values of draws at centres c (b,), making its
    own noise; blocks of at most ``block`` draws.  ``"auto"``: 2 draws on each of ``min(n,
    PILOT_CENTRES)`` centres, then :func:`plan` from the measured spreads, at most
    ``_MAX_ROUNDS`` times, within ``max_mc`` draws.  An int: below n, 2 draws on each of
    ``n_mc // 2`` centres; from n on, ``n_mc // n`` on every centre and 2 on the pilot ones.
    """
    design = TwoStageDesign(n, columns, torch.randperm(n, generator=rng, device=device))
    pilot = max(2, min(n, PILOT_CENTRES))
    if n_mc != "auto":
        total = int(n_mc)
        if total < n:
            design.extend(min(n, max(2, total // 2)), 2, block, draw)
        else:  # every centre; two draws on the pilot centres to measure their spread
            design.extend(pilot, max(2, total // n), block, draw)
            design.extend(n, total // n, block, draw)
        return design
    design.extend(max(2, min(pilot, max_mc // 2)), 2, block, draw)
    for _ in range(_MAX_ROUNDS):
        stats = design.stats()
        k = max(watch, key=lambda col: float(stats[1][col]))  # the column furthest off
        _, se, between, within = (float(v[k]) for v in stats)
        if se <= tolerance:
            break
        m, r = plan(design, between, within, tolerance, max_mc)
        if m <= design.m and r <= int(design.counts[design.order[:design.m]].min()):
            break
        design.extend(m, r, block, draw)
    return design


def plan(design: TwoStageDesign, between: float, within: float, tolerance: float, cap: int):
    """(m, r): centres, and least draws per centre, that should bring the se to
    ``tolerance`` at the fewest draws (see :class:`TwoStageDesign` for the se).

    Part of the centres at two draws each needs ``m = s_b^2 / (tol^2 + s_b^2 / n -
    s_w^2 / (2 n))``; every centre, ``r = s_w^2 / (n tol^2)`` draws each (at least one).
    """
    n, tol2 = design.n, tolerance ** 2
    full = max(1, math.ceil(_PLAN_MARGIN * within / (n * tol2)))
    if design.m < n:
        room = tol2 + between / n - within / (2.0 * n)
        part = math.ceil(_PLAN_MARGIN * between / room) if room > 0 else n
        if 2 * part < n * full or cap < n:
            return min(max(part, design.m + 1), n, max(design.m, cap // 2)), 2
    floor = int(design.counts.min()) if design.m == n else 0
    return n, max(floor + (design.m == n), min(full, cap // n))


def block_rows(n: int, budget: int, device: torch.device) -> int:
    """Noise vectors per block, each a row of n exponents (and logsumexp's temporaries),
    within ``budget`` bytes, and at most ``CPU_ROWS`` on CPU."""
    rows = max(1, budget // (3 * n * 8))
    return int(min(rows, CPU_ROWS)) if device.type == "cpu" else int(rows)
