"""Matrix-based Renyi alpha-entropy and mutual information (Giraldo, Rao & Principe 2015).

The entropy is a functional of the eigenvalues of a normalized Gram matrix, so it needs no
density estimate; its price is an O(n^3) eigendecomposition, which is why the estimator
works on at most ``max_samples`` rows.
"""

from __future__ import annotations

import math

import torch

from ibtools.errors import EstimatorRefused, InputError
from ibtools.estimators.base import Estimator, check_int, check_positive
from ibtools.estimators.intervals import hsic_null

#: Shuffles of the automatic independence check (p-values down to 1/51).
HSIC_PERMUTATIONS = 50

SIGMA_RULES = ("median", "silverman")

#: Fraction of the ln m ceiling above which a Gram matrix is flagged as nearly diagonal.
SATURATION_FRACTION = 0.95

#: Most float64 (m, m) matrices alive at once: an entropy holds the distance/Gram matrix, the
#: selection copy of the median and then the eigensolver's copies; MI holds A and B (or their
#: product) and the eigensolver's copies.  Measured peak resident growth on CPU at m = 2000 and
#: 3000: 3.0 and 4.0-4.1 times 8 m^2 bytes, plus a few MiB that do not grow with m.
ENTROPY_MATRICES = 3
MI_MATRICES = 4

UNITS_NOTE = ("matrix-based Renyi functional of a normalized Gram matrix, in nats (ln); it "
              "depends on the kernel width and is not a differential entropy")


# --------------------------------------------------------------------------- Gram matrices


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.0f} MiB"


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """All pairwise squared Euclidean distances of the rows of ``x`` (float64, (m, m)).

    Built in place on the one (m, m) product, so no second matrix is ever allocated.
    """
    x = x.to(torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    sq = (x * x).sum(dim=1)
    dist = (x @ x.T).mul_(-2.0).add_(sq[:, None]).add_(sq[None, :]).clamp_(min=0.0)
    dist.fill_diagonal_(0.0)
    return dist


def kernel_width(x: torch.Tensor, rule, dist: torch.Tensor | None = None) -> float:
    """Gaussian kernel width sigma for the rows of ``x`` by the named rule.

    ``"median"``: the median of the pairwise distances ``||x_i - x_j||`` (i < j); if half the
    pairs coincide, the mean of the positive distances; 1.0 if every row is the same (any
    width then gives the same all-ones Gram matrix).
    ``"silverman"``: ``gamma * m^(-1 / (4 + d))`` with gamma the root-mean-square of the
    per-column standard deviations (Silverman's rule as used by Giraldo et al. 2015).
    A number is returned as is.
    """
    if not isinstance(rule, str):
        return float(rule)
    m, d = int(x.shape[0]), int(x.shape[1])
    if rule == "silverman":
        gamma = float(x.to(torch.float64).var(dim=0, unbiased=True).mean().sqrt()) if m > 1 else 0.0
        return gamma * m ** (-1.0 / (4.0 + d)) if gamma > 0 else 1.0
    if m < 2:
        return 1.0
    dist = squared_distances(x) if dist is None else dist
    # The lower median of the P = m(m-1)/2 pair distances without listing the pairs: the
    # flattened matrix holds each pair twice plus m diagonal zeros (its smallest values), so
    # the pair median is its (m + P)-th smallest entry; sqrt is monotone, so it commutes.
    n_pairs = m * (m - 1) // 2
    med = math.sqrt(float(dist.reshape(-1).kthvalue(m + n_pairs).values))
    if med > 0:
        return med
    positive = dist[dist > 0]
    return float(positive.sqrt().mean()) if positive.numel() else 1.0


def gaussian_gram(dist: torch.Tensor, sigma: float) -> torch.Tensor:
    """``K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2))`` from squared distances."""
    return torch.exp(dist * (-0.5 / (sigma * sigma)))


def delta_gram(codes: torch.Tensor) -> torch.Tensor:
    """``K_ij = [y_i == y_j]`` for class codes (float64, (m, m))."""
    return (codes[:, None] == codes[None, :]).to(torch.float64)


def normalized_gram(k: torch.Tensor) -> torch.Tensor:
    """``A_ij = K_ij / (m sqrt(K_ii K_jj))``: trace 1, so its eigenvalues sum to 1."""
    m = k.shape[0]
    diag = k.diagonal().clamp(min=torch.finfo(k.dtype).tiny).sqrt()
    return k / (diag[:, None] * diag[None, :] * m)


def hadamard_joint(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(A o B) / tr(A o B)``: the normalized Gram matrix of the joint variable."""
    ab = a * b
    return ab / ab.diagonal().sum()


def renyi_of_spectrum(eigenvalues: torch.Tensor, alpha: float) -> float:
    """``1/(1 - alpha) ln sum lambda^alpha``; the von Neumann ``-sum lambda ln lambda`` at 1."""
    lam = eigenvalues.to(torch.float64)
    # eigvalsh returns the zero eigenvalues as +-1e-17 noise; below alpha = 1 their powers
    # (1e-17 ** 0.5 = 3e-9 each) would add up, so zero everything under the rank tolerance
    tol = float(lam.abs().max()) * lam.numel() * torch.finfo(torch.float64).eps
    lam = torch.where(lam > tol, lam, torch.zeros_like(lam))
    if alpha == 1.0:
        lam = lam[lam > 0]
        return float(-(lam * lam.log()).sum())
    return float(torch.log((lam ** alpha).sum()) / (1.0 - alpha))


def matrix_renyi_entropy(a: torch.Tensor, alpha: float) -> float:
    """S_alpha of a trace-1 positive semi-definite matrix (float64 eigendecomposition)."""
    return renyi_of_spectrum(torch.linalg.eigvalsh(a.to(torch.float64)), alpha)


def counts_renyi_entropy(codes: torch.Tensor, alpha: float) -> float:
    """S_alpha of the normalized delta Gram matrix of ``codes`` without building it.

    That matrix is block-diagonal with all-ones blocks of size n_k divided by n, so its
    eigenvalues are the class proportions n_k / n (and zeros): S_alpha is the Renyi entropy
    of the empirical class distribution.
    """
    counts = torch.bincount(codes).to(torch.float64)
    return renyi_of_spectrum(counts[counts > 0] / codes.shape[0], alpha)


# --------------------------------------------------------------------------- estimator


class MatrixRenyi(Estimator):
    r"""Matrix-based Renyi alpha-entropy and mutual information.

    For m rows and a positive-definite kernel, ``A = K_ij / (m sqrt(K_ii K_jj))`` has trace 1
    and its eigenvalues ``lambda_i`` act as a probability vector:

    .. math::

        S_\alpha(A) = \frac{1}{1-\alpha} \ln \sum_i \lambda_i^\alpha, \qquad
        S_1(A) = -\sum_i \lambda_i \ln \lambda_i,

        I_\alpha(X;Y) = S_\alpha(A) + S_\alpha(B)
                       - S_\alpha\!\left(\frac{A \circ B}{\mathrm{tr}(A \circ B)}\right).

    Continuous variables use the Gaussian kernel ``exp(-||x_i - x_j||^2 / (2 sigma^2))``;
    discrete ones (labels, token ids) the delta kernel ``[y_i == y_j]``, for which
    ``S_alpha(B)`` is exactly the Renyi entropy of the label frequencies (``ln K`` for K
    equally frequent classes).

    Parameters
    ----------
    alpha : float, default 1.01
        Renyi order, > 0.  ``alpha = 1`` is computed exactly as the von Neumann (Shannon)
        limit; the default follows Yu et al. (2019), close to Shannon.
    sigma : None, "median", "silverman" or float, default None
        Gaussian kernel width.  ``None`` is ``"median"``: the median pairwise Euclidean
        distance of the rows used, computed for each continuous variable separately (it
        scales with the data and stays sensible in high dimension).  ``"silverman"``:
        ``gamma m^(-1/(4+d))`` with gamma the root-mean-square column standard deviation,
        the rule of Giraldo et al. (2015); in high dimension it makes the kernel so narrow
        that the entropy saturates at ``ln m``.  A float fixes the width (in the units of the
        data) for every continuous variable.
    max_samples : int, default 1000
        Most rows used.  The eigendecomposition costs O(m^3) time and 8 m^2 bytes per Gram
        matrix, so larger inputs are subsampled at random (seeded); the result is then
        flagged and ``details["rows_used"]`` says how many rows were used.  At most
        ``MI_MATRICES`` (4) such matrices are alive at once for MI and ``ENTROPY_MATRICES``
        (3) for an entropy, and that must fit in ``memory_budget`` (default 256 MiB on CPU:
        up to 2896 rows for MI, 3344 for an entropy); otherwise the call is refused with a
        ValueError, before anything is allocated, that names the largest ``max_samples``
        that fits.  Refusing rather than quietly using fewer rows keeps ``m``, which the
        value depends on (its ceiling is ``ln m``), the one the user asked for.
    transform : None, "standardize" or "copula"
        Marginal transform of continuous inputs before the kernel.
    **common
        ``seed``, ``device``, ``dtype``, ``memory_budget``, ``ci`` (``"subsample"``),
        ``n_resamples``, ``confidence``, ``n_permutations``; see
        :class:`~ibtools.estimators.base.Estimator`.

    Returns
    -------
    EstimateResult
        ``details``: ``entropy_x``, ``entropy_y``, ``joint_entropy`` (MI) or ``entropy``,
        ``sigma_x``/``sigma_y`` (``None`` for a delta kernel), ``sigma_rule``, ``alpha``,
        ``rows_used``, ``units``.

    Notes
    -----
    Units: these are functionals of Gram matrices, in nats (natural log), not differential
    entropies; they lie in ``[0, ln m]`` and depend on the kernel width, so compare values
    computed with the same ``sigma`` rule, ``alpha`` and number of rows.  Bias: a narrow
    kernel makes A nearly diagonal and every entropy approaches ``ln m`` (the result is
    flagged); a wide one makes A nearly rank one and every entropy approaches 0.  The
    Hadamard joint satisfies ``S(A o B) >= max(S(A), S(B))`` (Giraldo et al. 2015), so
    ``I <= min(S(A), S(B))``.  A discrete-only estimate (both variables discrete, or the
    entropy of one) needs no eigendecomposition and uses every row.  Gram matrices and
    eigenvalues are float64 whatever ``dtype`` says (it only sets how inputs are read), and
    eigenvalues below the rank tolerance ``m eps lambda_max`` count as 0.  Intervals: subsampling
    (duplicated rows of a bootstrap would add identical Gram rows) of half the rows; the
    estimate's bias falls about like 1/m (at independence in 1-d: 0.018 nats at m = 500,
    0.009 at m = 1000), so the shift of the half-size values extrapolated at that rate is
    taken off the centre, and the interval is stretched to contain the value
    (:mod:`ibtools.estimators.intervals`).  Independence: at independence the value is
    positive and grows with the dimension under the median width (about 0.02 nats in 1-d,
    0.2-0.3 in 10-d, 0.8-0.9 in 64-d at m = 500-1000), so by default
    (``n_permutations="auto"``) an HSIC permutation test on the same Gram matrices (50
    shuffles, O(m^2) each; Gretton et al. 2008) decides whether the value can be told from
    independence; ``details["null"]`` holds the test and a p-value above 0.05 is flagged.

    References
    ----------
    .. [1] L. G. Sanchez Giraldo, M. Rao and J. C. Principe, "Measures of entropy from data
       using infinitely divisible kernels", IEEE Trans. Information Theory 61(1):535-548, 2015.
    .. [2] S. Yu, L. G. Sanchez Giraldo, R. Jenssen and J. C. Principe, "Multivariate
       extension of matrix-based Renyi's alpha-order entropy functional", IEEE TPAMI
       42(11):2960-2966, 2019.
    """

    name = "renyi"
    limitations = (
        "Matrix-based Renyi entropy: depends on alpha and the kernel width rule.")
    bounded_by_sample_size = True
    defaults = {"alpha": 1.01, "sigma": None, "max_samples": 1000}
    interval_kinds = ("subsample",)
    supports_transform = True
    handles_discrete_x = True
    handles_entropy_of_discrete = True
    stochastic = False
    #: the eigenvalues move by ~1e-13 between 1 and 2 threads, and a busy machine makes a
    #: second thread many times slower: always one thread, so the value is the same whatever
    #: the caller's count and the machine's load (see ``_jit``)
    fixed_threads = 1
    auto_permutations = HSIC_PERMUTATIONS

    def _independence_check(self, run, tensors, result, device):
        """HSIC permutation test on the point estimate's own rows and Gram matrices
        (label-only inputs: shuffles of the count-based value itself, which are cheap)."""
        x, y = tensors
        if x.ndim == 1 and y.ndim == 1:
            return super()._independence_check(run, tensors, result, device)
        idx = self._subsample(int(x.shape[0]), self._generator(device, 0))
        if idx is not None:
            x, y = x[idx], y[idx]
        a, _ = self._gram(x, x.ndim == 1)
        b, _ = self._gram(y, y.ndim == 1)
        g = torch.Generator(device="cpu")
        g.manual_seed(int(self.seed) + 104729)
        perms = [torch.randperm(int(b.shape[0]), generator=g).to(b.device)
                 for _ in range(HSIC_PERMUTATIONS)]
        null = hsic_null(a, b, perms)
        null.update(automatic=True, test="HSIC permutation test (Gretton et al. 2008) on the "
                    "Gram matrices of the estimate",
                    statistic="the HSIC statistic of the same Gram matrices under shuffled "
                    f"pairs (observed {null['hsic']:.3g})")
        return null

    def _check_settings(self) -> None:
        check_positive(self.alpha, "alpha")
        check_int(self.max_samples, "max_samples", minimum=2)
        if self.sigma is None or (isinstance(self.sigma, str) and self.sigma in SIGMA_RULES):
            return
        if isinstance(self.sigma, str):
            raise InputError(f"sigma={self.sigma!r} is not a known rule; use None, "
                             f"{list(SIGMA_RULES)} or a positive float")
        check_positive(self.sigma, "sigma")

    @property
    def _rule(self):
        return "median" if self.sigma is None else self.sigma

    # -- pieces ------------------------------------------------------------------------------

    def _subsample(self, n: int, rng: torch.Generator):
        if n <= self.max_samples:
            return None
        return torch.randperm(n, generator=rng, device=rng.device)[: self.max_samples]

    def _gram(self, t: torch.Tensor, discrete: bool):
        """Normalized Gram matrix and the kernel width used (None for the delta kernel).

        Same values as ``normalized_gram(gaussian_gram(...))``, computed in place on the one
        distance matrix so that a Gram matrix costs one (m, m) allocation.
        """
        k = delta_gram(t) if discrete else squared_distances(t)
        sigma = None if discrete else kernel_width(t, self._rule, k)
        if sigma is not None:
            k.mul_(-0.5 / (sigma * sigma)).exp_()
        diag = k.diagonal().clamp(min=torch.finfo(k.dtype).tiny).sqrt()
        return k.div_(diag[:, None]).div_(diag[None, :] * k.shape[0]), sigma

    def _check_memory(self, m: int, n_matrices: int, device: torch.device) -> None:
        """Refuse, before any (m, m) allocation, work whose Gram matrices exceed the budget."""
        need = n_matrices * 8 * m * m
        budget = self._budget(device)
        if need <= budget:
            return
        largest = math.isqrt(budget // (8 * n_matrices))
        given = ("memory_budget=None (default " + _mib(budget) + f" on {device.type})"
                 if self.memory_budget is None else f"memory_budget={self.memory_budget!r}")
        raise EstimatorRefused(
            f"renyi with max_samples={self.max_samples} would work on {m} rows: {n_matrices} "
            f"float64 matrices of {m} x {m} need {_mib(need)}, more than {given}; lower "
            f"max_samples to at most {largest} (rows are then subsampled, flagged) or raise "
            f"memory_budget. Time grows as m^3 as well.")

    def _saturation(self, name: str, value: float, m: int, sigma) -> list:
        if sigma is None or m < 2 or value < SATURATION_FRACTION * math.log(m):
            return []
        return [f"{name} = {value:.4f} is near its ceiling ln m = {math.log(m):.4f}: with "
                f"sigma={sigma:.4g} the Gram matrix is nearly diagonal (every sample its own "
                f"kernel), so the value reflects the number of rows; widen sigma"]

    def _subsample_flag(self, used: int, n: int) -> list:
        if used == n:
            return []
        return [f"subsampled: used {used} of {n} rows (max_samples={self.max_samples}, "
                f"seeded random subset), because the eigendecomposition is O(m^3)"]

    # -- estimator hooks -----------------------------------------------------------------------

    def _entropy(self, x, discrete, rng):
        n = int(x.shape[0])
        alpha = float(self.alpha)
        base = {"alpha": alpha, "units": UNITS_NOTE, "n": n}
        if discrete:
            value = counts_renyi_entropy(x, alpha)
            return value, {**base, "entropy": value, "sigma_x": None, "rows_used": n,
                           "kernel": "delta"}, []
        idx = self._subsample(n, rng)
        if idx is not None:
            x = x[idx]
        m = int(x.shape[0])
        self._check_memory(m, ENTROPY_MATRICES, x.device)
        a, sigma = self._gram(x, False)
        value = matrix_renyi_entropy(a, alpha)
        del a
        details = {**base, "entropy": value, "sigma_x": sigma, "sigma_rule": self._rule,
                   "rows_used": m, "kernel": "gaussian"}
        flags = self._subsample_flag(m, n) + self._saturation("S_alpha(A)", value, m, sigma)
        return value, details, flags

    def _mi(self, x, y, x_discrete, y_discrete, rng):
        n = int(x.shape[0])
        alpha = float(self.alpha)
        base = {"alpha": alpha, "units": UNITS_NOTE, "n": n}
        if x_discrete and y_discrete:
            # delta o delta is the delta kernel of the joint symbol: all from counts, all rows
            joint = x * (int(y.max()) + 1) + y
            s_x, s_y = counts_renyi_entropy(x, alpha), counts_renyi_entropy(y, alpha)
            s_xy = counts_renyi_entropy(joint, alpha)
            details = {**base, "entropy_x": s_x, "entropy_y": s_y, "joint_entropy": s_xy,
                       "sigma_x": None, "sigma_y": None, "rows_used": n}
            return s_x + s_y - s_xy, details, []
        idx = self._subsample(n, rng)
        if idx is not None:
            x, y = x[idx], y[idx]
        m = int(x.shape[0])
        self._check_memory(m, MI_MATRICES, x.device)
        a, sigma_x = self._gram(x, x_discrete)
        s_x = matrix_renyi_entropy(a, alpha)
        b, sigma_y = self._gram(y, y_discrete)
        s_y = matrix_renyi_entropy(b, alpha)
        joint = a.mul_(b)  # A o B in place of A: b is dropped next, a is not used again
        del a, b
        s_xy = matrix_renyi_entropy(joint.div_(joint.diagonal().sum()), alpha)
        del joint
        details = {**base, "entropy_x": s_x, "entropy_y": s_y, "joint_entropy": s_xy,
                   "sigma_x": sigma_x, "sigma_y": sigma_y,
                   "sigma_rule": self._rule,
                   "rows_used": m}
        flags = (self._subsample_flag(m, n) + self._saturation("S_alpha(A)", s_x, m, sigma_x)
                 + self._saturation("S_alpha(B)", s_y, m, sigma_y))
        return s_x + s_y - s_xy, details, flags
