"""Kraskov-Stoegbauer-Grassberger mutual information, Ross's continuous/discrete variant and
the Kozachenko-Leonenko entropy, all in the max-norm with exact neighbour search."""

from __future__ import annotations

import torch

from ibtools.errors import EstimatorRefused, InputTypeError
from ibtools.estimators.base import Estimator, check_choice, check_int, check_positive
from ibtools.estimators.neighbours import (
    BACKENDS,
    brute_engine,
    choose_backend,
    count_within,
    enough_points,
    joint_neighbour_counts_brute,
    knn_distance,
    tree_engine,
)

#: Share of tied values in a column (before the noise) from which a flag is raised.
TIE_SHARE_FLAG = 0.01

#: k above this fraction of n is refused: the kNN balls then hold a large share of the
#: sample, so the estimate measures the smoothing more than the data and is pulled toward
#: 0 whatever the dependence.  Measured on a 1 + 1-dim Gaussian pair of 0.69 nats (mean of
#: 10 seeds, n = 500 and 2000): -32 % at k = n/4, -60 % at n/2, -96 % at 0.9 n (0.017 nats
#: at k = 450 of 500).
K_MAX_FRACTION = 0.25
#: k above this fraction of n is flagged: the same pair reads -4 % at k = n/20 and -10 % at
#: n/10 (the bias from k alone; high dimension adds its own).
K_FLAG_FRACTION = 0.05


def scale_and_jitter(t: torch.Tensor, noise: float, generator: torch.Generator):
    """The geometry KSG works in: float64 columns centred, divided by their standard
    deviation, plus ``noise * N(0, 1)``.

    Scaling makes the max-norm weigh every coordinate alike (as Kraskov et al. advise) and
    gives the noise one meaning for every column: a fraction of its spread.  Constant
    columns are left unscaled (their spread is 0), so the noise is absolute there.  The
    noise is drawn from ``generator`` column block by column block, in the order the
    variables are passed, so an outside reference can reproduce it exactly.

    Returns
    -------
    scaled : Tensor (n, d), float64
    log_scale : float
        Sum of the log standard deviations of the non-constant columns: the entropy of the
        scaled data plus this is the entropy of the original data.
    """
    work = t.to(torch.float64)
    work = work - work.mean(dim=0, keepdim=True)
    std = work.std(dim=0, unbiased=False, keepdim=True)
    positive = std > 0
    scale = torch.where(positive, std, torch.ones_like(std))
    work = work / scale
    if noise > 0:
        work = work + noise * torch.randn(work.shape, generator=generator, device=work.device,
                                          dtype=torch.float64)
    return work, float(torch.log(scale).sum())


def tie_share(t: torch.Tensor) -> float:
    """Largest share, over columns, of values equal to another value in the same column."""
    s, _ = torch.sort(t, dim=0)
    same = s[1:] == s[:-1]  # (n-1, d)
    tied = torch.zeros_like(s, dtype=torch.bool)
    tied[1:] |= same
    tied[:-1] |= same
    return float(tied.float().mean(dim=0).max())


def _engine(backend: str, n: int, device: torch.device) -> dict:
    """The code behind the backend, for the result's details: the k-d tree of the "tree"
    backend, or what runs the "brute" one (the work is float64 whatever the input)."""
    if backend == "tree":
        return {"tree_engine": tree_engine(n)}
    return {"brute_engine": brute_engine(n, torch.float64, device)}


class KSG(Estimator):
    r"""Kraskov-Stoegbauer-Grassberger (KSG) k-nearest-neighbour mutual information.

    Continuous X and Y, with the max-norm in every space and :math:`\epsilon(i)` the
    distance from point i to its k-th neighbour in the joint space:

    * algorithm 1: :math:`I = \psi(k) + \psi(n) - \langle \psi(n_x + 1) + \psi(n_y + 1)\rangle`,
      :math:`n_x(i) = \#\{j \ne i : \|x_j - x_i\| < \epsilon(i)\}` (strict);
    * algorithm 2: :math:`I = \psi(k) - 1/k + \psi(n) - \langle \psi(n_x) + \psi(n_y)\rangle`,
      :math:`n_x(i) = \#\{j \ne i : \|x_j - x_i\| \le \epsilon_x(i)\}`, with
      :math:`\epsilon_x(i)` the largest x-distance among the k joint neighbours.

    Continuous X and discrete Y (Ross 2014): the k-th neighbour is sought among the
    :math:`N_{y(i)}` points of the same class, at distance :math:`d(i)`, and
    :math:`m(i) = \#\{j \ne i : \|x_j - x_i\| \le d(i)\}` counts all points;
    :math:`I = \psi(n) - \langle\psi(N_y)\rangle + \psi(k) - \langle\psi(m)\rangle`.
    A class with at most k members uses k = (its size - 1), and single-member classes are
    left out (both flagged), as in scikit-learn's ``mutual_info_classif``.

    Entropy (Kozachenko-Leonenko) with the max-norm, whose ball of radius r has volume
    :math:`(2r)^d`: :math:`H = \psi(n) - \psi(k) + d\,\langle \ln 2\epsilon(i)\rangle`.

    Parameters
    ----------
    k : int, default 3
        Neighbour order.  Larger k: less variance, more bias toward 0.  Refused above n/4
        (``K_MAX_FRACTION``) and flagged above n/20 (``K_FLAG_FRACTION``) for MI: such wide
        balls measure the smoothing more than the data.
    algorithm : {1, 2}, default 1
        KSG algorithm for two continuous variables (ignored for discrete Y and entropy).
    noise : float, default 1e-10
        Tie-breaking noise.  Every continuous column is centred and divided by its standard
        deviation, then ``noise * N(0, 1)`` is added (seeded by ``seed``), in float64 whatever
        ``dtype`` says, so the noise sits far above rounding and breaks exact ties without
        moving any distance that matters.  ``0`` turns it off (exact duplicates then give
        zero radii).
    neighbours : {"auto", "brute", "tree"}, default "auto"
        Neighbour search (see :mod:`ibtools.estimators.neighbours`): brute force (compiled
        per-row kernels on CPU with ``ibtools[fast]``, chunked torch blocks otherwise and on
        the GPU), or k-d trees on CPU.  All are exact and give the same number; "auto" picks
        brute force on the GPU, and on CPU trees only when n is large for the dimension.
        ``details`` name the backend and the engine behind it (``brute_engine`` or
        ``tree_engine``).
    transform : None, "standardize" or "copula"
        "copula" (ranks to normal scores per column) makes the estimate invariant to
        strictly monotone per-coordinate maps such as ``y**3`` or ``tanh``.

    Notes
    -----
    Assumptions: continuous variables with a density (ties only from rounding), samples
    i.i.d.  Bias: nearly unbiased when the joint density is close to uniform in the kNN
    ball, e.g. independent or weakly dependent variables; it reads low (biased toward 0)
    when the true MI is large or the dimension high for n, because the kNN ball then spans
    regions where the density changes — about 15 % low on a 5+5-dimensional Gaussian with
    n = 10 000.  Values can be slightly negative at independence.  Strongly non-linear
    marginals (``y**3``) add to the downward bias; ``transform="copula"`` removes it.
    Work: k-d trees in low dimension on CPU, O(n^2 d) brute force otherwise and on GPUs
    (:mod:`ibtools.estimators.neighbours`; timings in ``benchmarks/RESULTS.md``).
    Intervals: ``ci="subsample"`` (m-out-of-n, the ``"auto"`` choice) or ``ci="seeds"``
    (spread over tie-breaking noise only: small unless the data have ties).

    References
    ----------
    A. Kraskov, H. Stoegbauer, P. Grassberger, "Estimating mutual information",
    Phys. Rev. E 69, 066138 (2004).
    B. C. Ross, "Mutual information between discrete and continuous data sets",
    PLoS ONE 9(2): e87357 (2014).
    L. F. Kozachenko, N. N. Leonenko, "Sample estimate of the entropy of a random vector",
    Problems Inform. Transmission 23(2), 95-101 (1987).
    """

    name = "ksg"
    limitations = (
        "k-nearest-neighbour estimate (Kraskov et al. 2004): biased low in high dimension and "
        "for strongly dependent variables.")
    defaults = {"k": 3, "algorithm": 1, "noise": 1e-10, "neighbours": "auto"}
    interval_kinds = ("subsample", "seeds")
    supports_transform = True
    handles_discrete_x = False
    handles_entropy_of_discrete = False
    stochastic = True

    def _check_settings(self) -> None:
        check_int(self.k, "k", minimum=1)
        if isinstance(self.algorithm, bool):
            raise InputTypeError(f"algorithm must be the integer 1 or 2; got {self.algorithm!r}")
        check_choice(self.algorithm, "algorithm", (1, 2))
        check_positive(self.noise, "noise", allow_zero=True)
        check_choice(self.neighbours, "neighbours", BACKENDS)

    def _min_samples(self) -> int:
        return int(self.k) + 1

    def _check_n(self, n: int) -> None:
        super()._check_n(n)
        k = int(self.k)
        if k > K_MAX_FRACTION * n:
            raise EstimatorRefused(
                f"k={k} is more than a quarter of the n={n} rows: each kNN ball then holds "
                f"much of the sample and KSG reads near 0 whatever the dependence (k=450 of "
                f"n=500 gives 0.017 nats for a true 0.69); use k <= {int(K_MAX_FRACTION * n)} "
                f"(3 to 10 is usual), or more rows")

    # -- helpers ------------------------------------------------------------------------

    def _backend(self, device: torch.device, dim: int, n: int) -> str:
        return choose_backend(self.neighbours, device, dim, n)

    def _flags_before_noise(self, parts, names, n: int, mutual: bool = True) -> list:
        flags = []
        for t, name in zip(parts, names):
            share = tie_share(t)
            if share >= TIE_SHARE_FLAG:
                flags.append(
                    f"{name} has many tied values before the noise ({100 * share:.1f}% of one "
                    f"column's values equal another): KSG assumes continuous data, so the "
                    f"estimate leans on the tie-breaking noise (noise={self.noise:g}); "
                    f"consider binning, or declaring {name} discrete")
        k = int(self.k)
        if mutual and k > K_FLAG_FRACTION * n:
            flags.append(f"k={k} is {100 * k / n:.0f}% of the n={n} rows: the kNN balls are "
                         f"wide, which biases the estimate toward 0 (a 1 + 1-dim Gaussian pair "
                         f"reads 10% low at k = n/10, 32% at n/4); use a smaller k or more rows")
        dim = sum(int(t.shape[1]) for t in parts)
        if mutual and dim >= 8 and not enough_points(n, dim, 1000):
            flags.append(
                f"dimension {dim} is high for n={n}: KSG is biased toward 0 here (it reads "
                f"low, more so the larger the true value); about 15% low on a 5+5-d Gaussian "
                f"at n=10000. Use more samples, fewer dimensions, or compare estimators")
        return flags

    # -- mutual information ---------------------------------------------------------------

    def _mi(self, x, y, x_discrete, y_discrete, rng):
        if y_discrete:
            return self._mi_mixed(x, y, rng)
        n = int(x.shape[0])
        k = int(self.k)
        flags = self._flags_before_noise([x, y], ["x", "y"], n)
        xs, _ = scale_and_jitter(x, float(self.noise), rng)
        ys, _ = scale_and_jitter(y, float(self.noise), rng)
        backend = self._backend(x.device, xs.shape[1] + ys.shape[1], n)
        algorithm = int(self.algorithm)
        if backend == "brute":
            _, (nx, ny) = joint_neighbour_counts_brute([xs, ys], k, algorithm,
                                                       self._budget(x.device))
        else:
            budget = self._budget(x.device)
            z = torch.cat([xs, ys], dim=1)
            eps, idx = knn_distance(z, k, backend, budget, return_indices=algorithm == 2)
            if algorithm == 1:
                nx = count_within(xs, eps, True, backend, budget)
                ny = count_within(ys, eps, True, backend, budget)
            else:
                eps_x = (xs[idx] - xs.unsqueeze(1)).abs().amax(dim=(1, 2))
                eps_y = (ys[idx] - ys.unsqueeze(1)).abs().amax(dim=(1, 2))
                nx = count_within(xs, eps_x, False, backend, budget)
                ny = count_within(ys, eps_y, False, backend, budget)
        nx = nx.to(torch.float64)
        ny = ny.to(torch.float64)
        if algorithm == 1:
            marg = torch.special.digamma(nx + 1) + torch.special.digamma(ny + 1)
            value = _digamma(k) + _digamma(n) - float(marg.mean())
        else:
            marg = torch.special.digamma(nx) + torch.special.digamma(ny)
            value = _digamma(k) - 1.0 / k + _digamma(n) - float(marg.mean())
        if value < 0:
            flags.append(f"negative estimate ({value:.4f} nats): KSG's sampling error around "
                         f"0; read it as no detectable dependence")
        details = {"backend": backend, **_engine(backend, n, x.device), "algorithm": algorithm,
                   "k": k,
                   "mean_nx": float(nx.mean()), "mean_ny": float(ny.mean())}
        return value, details, flags

    def _mi_mixed(self, x, labels, rng):
        k = int(self.k)
        n_all = int(x.shape[0])
        flags = self._flags_before_noise([x], [self._user_name("x")], n_all)
        xs, _ = scale_and_jitter(x, float(self.noise), rng)
        classes, codes, sizes = torch.unique(labels, return_inverse=True, return_counts=True)
        keep = sizes[codes] > 1
        dropped = int((~keep).sum())
        if dropped:
            flags.append(f"{dropped} sample(s) are the only member of their class and were left "
                         f"out (no within-class neighbour exists)")
            xs, codes = xs[keep], codes[keep]
            sizes = torch.bincount(codes, minlength=len(classes))
        n = int(xs.shape[0])
        if n < 2 or int((sizes > 1).sum()) == 0:
            name = self._user_name("y")
            raise EstimatorRefused(f"{name}: every class has a single sample (n={n_all}); Ross's KSG "
                             f"needs classes with at least 2 samples. {name} was read as class "
                             f"labels (strings, and integers of one column, are labels); if it "
                             f"holds measurements, pass it as floats (or discrete_{name}=False "
                             f"for integers)")
        backend = self._backend(x.device, int(xs.shape[1]), n)
        budget = self._budget(x.device)
        radius = torch.empty(n, dtype=torch.float64, device=xs.device)
        k_used = torch.empty(n, dtype=torch.float64, device=xs.device)
        small = []
        for c in torch.nonzero(sizes > 1).reshape(-1).tolist():
            members = torch.nonzero(codes == c).reshape(-1)
            kc = min(k, int(members.numel()) - 1)
            if kc < k:
                small.append((int(members.numel()), kc))
            eps, _ = knn_distance(xs[members], kc, backend, budget)
            radius[members] = eps
            k_used[members] = kc
        if small:
            flags.append(f"{len(small)} class(es) have <= k={k} samples; k was reduced to "
                         f"(class size - 1) for them (sizes and k: {small[:5]})")
        m = count_within(xs, radius, False, backend, budget).to(torch.float64)
        size_of = sizes[codes].to(torch.float64)
        value = (_digamma(n) - float(torch.special.digamma(size_of).mean())
                 + float(torch.special.digamma(k_used).mean())
                 - float(torch.special.digamma(m).mean()))
        if value < 0:
            flags.append(f"negative estimate ({value:.4f} nats): sampling error around 0; "
                         f"read it as no detectable dependence")
        # per-class neighbour searches pick their engine by class size, the counts by n
        engines = [_engine(backend, int(m), x.device)
                   for m in [n] + [s for s in sizes.tolist() if s > 1]]
        key = next(iter(engines[0]))
        details = {"backend": backend, "estimator": "ross2014", "k": k,
                   key: "+".join(sorted({e[key] for e in engines})),
                   "n_classes": int((sizes > 0).sum()), "n_used": n, "mean_m": float(m.mean())}
        return value, details, flags

    # -- entropy --------------------------------------------------------------------------

    def _entropy(self, x, discrete, rng):
        n, d = int(x.shape[0]), int(x.shape[1])
        k = int(self.k)
        flags = self._flags_before_noise([x], ["x"], n, mutual=False)
        xs, log_scale = scale_and_jitter(x, float(self.noise), rng)
        constant = int((x.std(dim=0) == 0).sum()) if n > 1 else d
        if constant:
            flags.append(f"x has {constant} constant column(s): their differential entropy is "
                         f"-inf, and the estimate only reflects the tie-breaking noise there")
        backend = self._backend(x.device, d, n)
        eps, _ = knn_distance(xs, k, backend, self._budget(x.device))
        zero = int((eps <= 0).sum())
        if zero:
            raise EstimatorRefused(f"x has {zero} rows whose {k} nearest neighbours are exact "
                             f"duplicates, so the Kozachenko-Leonenko log-radius is -inf; "
                             f"use noise > 0 (now noise={self.noise!r}) or a larger k")
        value = (_digamma(n) - _digamma(k) + d * float(torch.log(2 * eps).mean()) + log_scale)
        details = {"backend": backend, **_engine(backend, n, x.device), "k": k,
                   "mean_log_radius": float(torch.log(eps).mean())}
        return value, details, flags


def _digamma(v: float) -> float:
    return float(torch.special.digamma(torch.tensor(float(v), dtype=torch.float64)))
