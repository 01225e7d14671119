"""The sampling design of the mixture entropy: which centres get how many draws, and the
standard error of the mean of the draws.

A two-stage design (:class:`TwoStageDesign`): first a random sample of centres, then draws
at each (antithetic pairs), the value their mean after control variates, its standard error
Cochran's two-stage one; per-centre covariates known at all n centres
(:func:`centre_covariates`: distance from the middle and crowding by landmark densities)
correct the choice of centres by regression.  :func:`run_design` runs the pilot and the
replanned rounds of ``n_mc="auto"``; :func:`plan` chooses centres and draws per centre for a
target standard error.  Split from :mod:`ibtools.estimators.mixture_sampling` (exponents,
kernels and control variates of one block of draws), which re-exports these names.
"""

from __future__ import annotations

import math

import torch

#: Centres (with two draws each) of the first round of ``n_mc="auto"``.
PILOT_CENTRES = 512
#: Rounds of ``n_mc="auto"``: a pilot, then at most this many corrections of the design.
_MAX_ROUNDS = 6
#: Share of the planned extra centres drawn before the design is replanned (all of them
#: in the last round).
_STEP_SHARE = 0.75
#: Margin on the planned number of draws (the pilot's variances are themselves estimates).
_PLAN_MARGIN = 1.05
#: Fewest draws, per control variate, before their coefficients are fitted (else none).
_CV_MIN_DRAWS = 40


#: Landmark rows of the crowding covariate (:func:`centre_covariates`).
LANDMARKS = 256


#: Widths of the crowding covariates, as multiples of the noise variance: the widest, then
#: halvings (each kernel the square of the one before).  Measured on the benchmark's
#: clustered rows (n = 10 000, d = 64, s2 = 5; spread of the centres' means left after the
#: regression, of 2.9 before): widths 1 and 4: 0.14; 1, 2 and 4: 0.09.
LANDMARK_WIDTHS = (4.0, 2.0, 1.0)


def _landmark_density(t: torch.Tensor, noise_var: float, landmarks: torch.Tensor) -> list:
    """``ln sum_l exp(-|t_c - t_l|^2 / (2 width s2))`` over the landmark rows l other than
    c itself, for every row c and each of ``LANDMARK_WIDTHS`` (float64 (n,) tensors, one
    per width).  One exponential per distance: the kernel at the widest width, shifted by
    the row's nearest landmark, squared for each halving."""
    u = t - t.mean(dim=0, keepdim=True)
    marks = u[landmarks]
    sq_marks = marks.square().sum(dim=1)
    out = [[] for _ in LANDMARK_WIDTHS]
    step = max(1, (16 << 20) // max(1, 4 * int(landmarks.numel())))
    for i0 in range(0, int(u.shape[0]), step):
        rows = u[i0:i0 + step]
        d2 = (rows.square().sum(dim=1, keepdim=True) + sq_marks - 2.0 * rows @ marks.T)
        d2 = d2.clamp_(min=0.0)
        own = landmarks[None, :] == torch.arange(i0, i0 + int(rows.shape[0]),
                                                 device=t.device)[:, None]
        d2.masked_fill_(own, math.inf)
        near = d2.amin(dim=1, keepdim=True)
        near = torch.where(torch.isfinite(near), near, torch.zeros_like(near))
        kernel = d2.sub_(near).div_(-2.0 * LANDMARK_WIDTHS[0] * noise_var).exp_()
        near = near[:, 0].to(torch.float64)
        for i, (col, width) in enumerate(zip(out, LANDMARK_WIDTHS)):
            if i:
                kernel.square_()
            col.append(kernel.sum(dim=1).to(torch.float64).log_()
                       - near / (2.0 * width * noise_var))
    columns = []
    for col in out:
        density = torch.cat(col)
        # a row with every landmark at -inf (one landmark, itself) gets the others' lowest
        finite = torch.isfinite(density)
        low = float(density[finite].min()) if bool(finite.any()) else 0.0
        columns.append(torch.where(finite, density, torch.full_like(density, low)))
    return columns


def centre_covariates(*ts: torch.Tensor, noise_var: float | None = None,
                      rng: torch.Generator | None = None) -> torch.Tensor:
    """Cheap per-centre predictors of a centre's mean draw, known at every centre (n, q).

    How much a draw at centre c scores depends mostly on how crowded the mixture is around
    t_c.  Per mixture: ``|t_c - mean|^2`` and its square, and the same distance with each
    coordinate scaled by its spread (in a roughly elliptical cloud crowding follows the
    distance from the middle); and, given ``noise_var`` and ``rng``, the log kernel density
    at t_c of ``LANDMARKS`` random rows, at the variances ``LANDMARK_WIDTHS`` times s2
    (clusters, holes: crowding that does not follow the distance from the middle).  O(n d)
    and O(n LANDMARKS d): about what ``LANDMARKS`` noise draws cost.  Their mean over all n
    centres is known exactly, so they serve as control variates of the centre sampling (a
    regression estimator; see :class:`TwoStageDesign`); they need not predict well to be
    valid, only to help.
    """
    cols = []
    for t in ts:
        n = int(t.shape[0])
        if noise_var is not None and rng is not None and n > 2:
            # a generator of their own: the draws' stream is the same with or without them
            own = torch.Generator(device=rng.device).manual_seed(rng.initial_seed() + 1)
            marks = torch.randperm(n, generator=own, device=rng.device)[:min(LANDMARKS, n)]
            marks = marks.to(t.device)
            cols += _landmark_density(t, noise_var, marks)
        u = (t - t.mean(dim=0, keepdim=True)).square_()
        spread = u.mean(dim=0)
        r = u.sum(dim=1).to(torch.float64)
        scaled = (u / torch.where(spread > 0, spread, 1.0)).sum(dim=1).to(torch.float64)
        scale = float(r.mean()) or 1.0
        cols += [r / scale, (r / scale).square(), scaled / max(1, int(t.shape[1]))]
    return torch.stack(cols, dim=1)


class TwoStageDesign:
    """Which centres were drawn how often, each draw's values and control variates.

    Centres are taken in a random ``order``: the first m, centre c with ``counts[c]`` draws
    (r_c; two on the pilot centres, one, two or more on the others).  The value is the mean
    of the centres' means; with ``f = m / n``, ``s_b^2`` the spread of the centres' means and
    ``s_w^2`` the mean within-centre variance (from the centres drawn at least twice, at
    least the first ``min(n, PILOT_CENTRES)``, a random subset), its standard error is
    (Cochran, two-stage sampling) ``se^2 = ((1 - f) s_b^2 + f s_w^2 mean(1 / r_c)) / m``.
    Part of the centres at two draws each gives ``(1 - f) s_b^2 / m + f s_w^2 / (2 m)``;
    every centre (f = 1): the spread between centres costs nothing, ``s_w^2 sum_c (1 / r_c)
    / n^2``.

    The draws are kept (a few numbers each), so :meth:`stats` can first subtract the
    control variates (mean exactly 0; see the module notes) with coefficients fitted on all
    draws, then apply these formulas to the adjusted values.  With ``covariates`` (n, q),
    known at every centre, the centres' means are then adjusted too (the regression
    estimator of survey sampling): ``ybar_c - g . (x_c - X)``, X the mean over all n
    centres, g fitted by least squares on the drawn centres; what ``s_b^2`` then measures is
    the spread the covariates leave.  With every centre drawn the adjustment is 0.
    """

    def __init__(self, n: int, columns: int, order: torch.Tensor, covariates=None):
        self.n, self.m, self.order, self.columns = n, 0, order, columns
        #: (n, q) tensor, or a function giving it (called when first needed), or None
        self.covariates = covariates
        #: whether :meth:`stats` adjusts the centres' means (run_design turns it off while
        #: the pilot alone may do, so the covariates are not computed for nothing)
        self.adjust_centres = True
        self.counts = torch.zeros(n, dtype=torch.int64, device=order.device)
        self._centres, self._values, self._features = [], [], []
        self._stats = None

    @property
    def draws(self) -> int:
        return int(self.counts.sum())

    def add(self, centres: torch.Tensor, values: torch.Tensor,
            features: torch.Tensor | None = None) -> None:
        """Add (columns, b) per-draw values of draws made at ``centres`` (b,), and their
        (p, b) control variates (mean 0 at every centre), if any."""
        self._centres.append(centres)
        self._values.append(values.to(torch.float64))
        self._features.append(None if features is None else features.to(torch.float64))
        self.counts.index_add_(0, centres, torch.ones_like(centres))
        self._stats = None

    def extend(self, m: int, r: int, block: int, draw) -> None:
        """Bring each of the first m centres of the order to at least r draws, drawing in
        blocks of ``block`` (``draw(c)`` gives the (columns, b) values at centres c, or
        ``(values, features)``)."""
        centres = self.order[:max(m, self.m)]
        more = (r - self.counts[centres]).clamp_(min=0)
        self.m = max(m, self.m)
        c_all = centres.repeat_interleave(more)
        for i0 in range(0, int(c_all.numel()), block):
            c = c_all[i0:i0 + block]
            out = draw(c)
            self.add(c, *out) if isinstance(out, tuple) else self.add(c, out)

    def adjusted(self):
        """(centres (N,), values (columns, N)): every draw, less its control variates times
        coefficients fitted by least squares per column (none with too few draws)."""
        centres = torch.cat(self._centres)
        values = torch.cat(self._values, dim=1)
        if any(f is None for f in self._features) or not self._features:
            return centres, values
        feats = torch.cat(self._features, dim=1)                       # (p, N)
        p, n_draws = int(feats.shape[0]), int(feats.shape[1])
        if n_draws < _CV_MIN_DRAWS * p:
            return centres, values
        x = (feats - feats.mean(dim=1, keepdim=True)).T               # (N, p)
        y = (values - values.mean(dim=1, keepdim=True)).T              # (N, columns)
        gram = x.T @ x
        gram.diagonal().add_(1e-12 * float(gram.diagonal().max()) + 1e-300)
        beta = torch.linalg.solve(gram, x.T @ y)                       # (p, columns)
        return centres, values - beta.T @ feats

    def _centre_adjusted(self, centres: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``values`` less ``g . (x_c - X)`` per draw (see the class notes)."""
        if self.covariates is None or not self.adjust_centres or self.m >= self.n:
            return values
        if callable(self.covariates):
            self.covariates = self.covariates()
        cov = self.covariates
        used = self.order[:self.m]
        if self.m < _CV_MIN_DRAWS * int(cov.shape[1]):
            return values
        r = self.counts[used].to(torch.float64)
        sums = torch.zeros(self.columns, self.n, dtype=torch.float64, device=values.device)
        sums.index_add_(1, centres, values)
        means = sums[:, used] / r                                        # (columns, m)
        x = cov[used].to(torch.float64)
        xc = x - x.mean(dim=0, keepdim=True)
        gram = xc.T @ xc
        gram.diagonal().add_(1e-12 * float(gram.diagonal().max()) + 1e-300)
        g = torch.linalg.solve(gram, xc.T @ (means - means.mean(dim=1, keepdim=True)).T)
        shift = (cov.to(torch.float64) - cov.to(torch.float64).mean(dim=0)) @ g  # (n, cols)
        return values - shift[centres].T

    def stats(self):
        """(mean, se, s_b^2, s_w^2) per column, as float64 tensors of shape (columns,)."""
        if self._stats is not None:
            return self._stats
        centres, values = self.adjusted()
        values = self._centre_adjusted(centres, values)
        sums = torch.zeros(self.columns, self.n, dtype=torch.float64, device=self.order.device)
        squares = torch.zeros_like(sums)
        sums.index_add_(1, centres, values)
        squares.index_add_(1, centres, values * values)
        used = self.order[:self.m]
        r = self.counts[used].to(torch.float64)
        sums, squares = sums[:, used], squares[:, used]
        means = sums / r
        multi = r >= 2
        within = ((squares[:, multi] - sums[:, multi] * means[:, multi]) / (r[multi] - 1))
        within = within.clamp_(min=0.0).mean(dim=1)
        between = means.var(dim=1) if self.m > 1 else torch.zeros_like(within)
        # (1 - f) s_b^2 / m + f s_w^2 mean(1/r_c) / m: Cochran's two-stage formula with r_c
        # draws on centre c; with every centre drawn (f = 1) only the within part is left
        f = self.m / self.n
        var = ((1.0 - f) * between + f * within * float((1.0 / r).mean())) / self.m
        self._stats = (means.mean(dim=1), var.sqrt(), between, within)
        return self._stats


def run_design(n: int, columns: int, draw, *, rng: torch.Generator, device: torch.device,
               n_mc, tolerance: float, max_mc: int, block: int,
               watch: tuple = (0,), covariates=None) -> TwoStageDesign:
    """Draw per ``n_mc`` (an int, or ``"auto"``: to a standard error of ``tolerance`` on
    each column in ``watch``).

    ``draw(c)`` gives the (columns, b) per-draw values of draws at centres c (b,), making its
    own noise, or ``(values, features)`` with (p, b) control variates of mean 0; blocks of
    at most ``block`` draws.  ``covariates``: the centres' (n, q) covariates, or a function
    giving them (see :class:`TwoStageDesign`).  ``"auto"``: 2 draws on each of ``min(n,
    PILOT_CENTRES)`` centres; if that is not enough, :func:`plan` from the measured spreads
    (centre covariates now used), at most ``_MAX_ROUNDS`` times, within ``max_mc`` draws.
    An int: below n, 2 draws on each of ``n_mc // 2`` centres; from n on, ``n_mc // n`` on
    every centre and 2 on the pilot ones.
    """
    design = TwoStageDesign(n, columns, torch.randperm(n, generator=rng, device=device),
                            covariates)
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
    design.adjust_centres = False
    stats = design.stats()
    if max(float(stats[1][col]) for col in watch) <= tolerance:
        return design  # the pilot is enough: no centre covariates needed
    design.adjust_centres, design._stats = True, None
    for step in range(_MAX_ROUNDS):
        stats = design.stats()
        k = max(watch, key=lambda col: float(stats[1][col]))  # the column furthest off
        _, se, between, within = (float(v[k]) for v in stats)
        if se <= tolerance:
            break
        m, r = plan(design, between, within, tolerance, max_mc)
        if m <= design.m and r <= int(design.counts[design.order[:design.m]].min()):
            break
        if step < _MAX_ROUNDS - 1 and design.m < m < n:
            # a planned size from the pilot alone tends to overshoot (the covariates' and
            # control variates' fits improve with the draws): go part of the way, replan
            m = design.m + math.ceil(_STEP_SHARE * (m - design.m))
        design.extend(m, r, block, draw)
    return design


def plan(design: TwoStageDesign, between: float, within: float, tolerance: float, cap: int):
    """(m, r): centres, and least draws per centre, that should bring the se to
    ``tolerance`` at the fewest draws (see :class:`TwoStageDesign` for the se).

    With ``S^2 = s_b^2 - s_w^2 mean(1/r_c)`` the spread of the centres' own means, r draws
    on each of m centres give ``se^2 = (1 - f) S^2 / m + s_w^2 / (r m)``, so ``m = (S^2 +
    s_w^2 / r) / (tol^2 + S^2 / n)``; r = 1 (the pilot centres keep their two) costs m draws,
    r = 2 costs 2m; every centre at r draws needs ``r = s_w^2 / (n tol^2)``.  The cheapest
    wins.  Once the control variates have taken most of the spread within a centre, one draw
    per centre on more centres is usually cheapest.
    """
    n, tol2 = design.n, tolerance ** 2
    used = design.order[:design.m]
    inv_r = float((1.0 / design.counts[used].clamp(min=1).to(torch.float64)).mean()) \
        if design.m else 0.5
    spread = max(0.0, between - within * inv_r)
    full = max(1, math.ceil(_PLAN_MARGIN * within / (n * tol2)))
    options = [(n * full, n, full)]
    if design.m < n:
        for r in (1, 2):
            m = math.ceil(_PLAN_MARGIN * (spread + within / r) / (tol2 + spread / n))
            if m < n:
                options.append((r * m, max(m, design.m + 1), r))
    _, m, r = min(options)
    if m == n:
        floor = int(design.counts.min()) if design.m == n else 0
        return n, max(floor + (design.m == n), min(r, max(1, cap // n)))
    return min(m, max(design.m, cap // r)), r
