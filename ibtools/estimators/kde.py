"""Pairwise-distance (KDE) bounds on the entropy of T + Gaussian noise.

A deterministic network maps distinct inputs to distinct activations, so the mutual
information between its input and a continuous layer is infinite (or equals ln n on a finite
sample).  Saxe et al. (2018) make it finite by reading the layer as ``T + Z`` with
``Z ~ N(0, s2 I)``: on a sample of n rows, ``T + Z`` is an equal-weight mixture of n
Gaussians centred on the rows, whose entropy Kolchinsky & Tracey (2017) bound from both
sides with pairwise divergences between the components.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ibtools.estimators import _jit, resolution
from ibtools.estimators.base import Estimator, check_choice, check_positive, chunk_rows
from ibtools.estimators.determinism import not_a_function_flag

#: Fraction of the ln n ceiling above which the kernel no longer resolves any structure.
SATURATION_FRACTION = 0.95


def gaussian_noise_entropy(dim: int, noise_var: float) -> float:
    """Differential entropy of N(0, noise_var * I_dim) in nats: d/2 ln(2 pi e s2)."""
    return 0.5 * dim * math.log(2.0 * math.pi * math.e * noise_var)


#: Exponents (base 2) are clamped here before ``exp2``: 2^-115 ~ 2e-35 is nothing next to the
#: row's own term 2^0 = 1, and arguments below about -126 give float32 denormals, which make
#: the vectorised exponential an order of magnitude slower.
_MIN_EXPONENT = -115.0
#: Error (nats) the float32 distance matmul may add before float64 is used.
_MATMUL_TOLERANCE = 1e-4
#: On CPU, one block of the kernel matrix is sized to stay in cache (about this many bytes):
#: the matmul, exp2, squarings and sums then each read it from cache, not from memory.  But
#: the matmul of a block needs enough rows to run at speed when d is large: d + 2 rows,
#: between _CPU_MIN_ROWS and _CPU_MAX_ROWS, whatever the cache says.  Measured (one thread,
#: seconds by rows per block): n = 20 000, d = 20: 0.73 (16), 0.53 (32), 2.37 (1677, sized to
#: the budget); n = 8 000, d = 1024: 1.89 (32), 1.24 (128), 1.15 (256), 2.27 (4194).
_CPU_BLOCK_BYTES = 2 << 20
_CPU_MIN_ROWS = 32
_CPU_MAX_ROWS = 256


def _block_rows(n: int, per_row: int, budget: int, device: torch.device, dim: int) -> int:
    rows = chunk_rows(n, per_row, budget)
    if device.type == "cpu":
        for_matmul = min(_CPU_MAX_ROWS, max(_CPU_MIN_ROWS, dim + 2))
        rows = min(rows, max(for_matmul, _CPU_BLOCK_BYTES // max(1, per_row)))
    return max(1, min(n, rows))


#: Rows from which "auto" uses the fused numba pass.  Its first use in a fresh install
#: compiles it (a few seconds, then cached on disk); below this size a call takes
#: milliseconds either way.
KDE_NUMBA_MIN_N = 4096
#: Rows per block with the fused pass: it reads a block once, so the block need not fit in
#: cache, and the matmul runs faster on taller blocks.  Measured (2 threads, seconds by rows
#: 32 / 64 / 128 / 256, torch path last): n = 20 000, d = 20: 0.131 / 0.122 / 0.107 / 0.110,
#: 0.218; n = 5000, d = 64: 0.022 / 0.019 / 0.017 / 0.015, 0.026; n = 8000, d = 1024:
#: 0.84 / 0.56 / 0.48 / 0.44, 0.49.
_NUMBA_ROWS = 256
_KERNELS = _jit.Compiled("_kde_numba")


def kde_engine(n: int, dtype: torch.dtype, device: torch.device) -> str:
    """Which code does the elementwise part of the KDE kernel for n float rows.

    ``"numba"``: one fused, compiled pass per block (:mod:`ibtools.estimators._kde_numba`;
    needs numba: ``pip install "ibtools[fast]"``), float32 on CPU only; faster than
    ``"torch"`` (eager torch passes: clamp, exp2, squarings, sums), most at small d
    (``benchmarks/RESULTS.md``).  The two
    agree to about 1e-6 nats (their exponentials differ in the last bits).  The environment
    variable ``IBTOOLS_KDE_ENGINE`` (``auto`` | ``numba`` | ``torch``) overrides the choice;
    ``auto`` takes numba when it is installed, the work is float32 on CPU and
    ``n >= KDE_NUMBA_MIN_N``.  CUDA and float64 always use torch.
    """
    return _jit.choose("IBTOOLS_KDE_ENGINE", "torch", _KERNELS,
                       eligible=device.type == "cpu" and dtype == torch.float32,
                       n=n, min_n=KDE_NUMBA_MIN_N)


def pairwise_log_means(t: torch.Tensor, noise_var: float, budget: int):
    """Row-wise log mean kernels of the KL and Bhattacharyya pairwise-distance bounds.

    Parameters
    ----------
    t : Tensor, shape (n, d)
        Kernel centres, on any device, float32 or float64.
    noise_var : float
        Kernel variance s2.
    budget : int
        Scratch bytes one block of rows may use.

    Returns
    -------
    kl, bd : Tensor, shape (n,), float64
        ``kl[i] = ln 1/n sum_j exp(-||t_i - t_j||^2 / (2 s2))`` and the same with
        ``8 s2`` in place of ``2 s2``.
    info : dict
        ``chunk_rows`` (rows per block), ``pairs`` (kernel entries computed, diagonal
        blocks in full) and ``engine`` (see :func:`kde_engine`).

    Notes
    -----
    The kernel matrix is symmetric, so only its upper triangle is computed: the block of
    rows ``i0:i1`` meets the columns ``i0:n``; its row sums go to rows ``i0:i1`` and the
    column sums of its part right of the diagonal block go to rows ``i1:n``.  That is half
    the pairs of a full pass.  One matmul per block gives the base-2 exponent
    ``-||t_i - t_j||^2 log2(e) / (8 s2)`` directly, from the augmented rows
    ``[2u_i, -|u_i|^2, -1] . [u_j, 1, |u_j|^2]`` with ``u = t sqrt(log2(e) / (8 s2))`` after
    centring (smaller norms, less cancellation); it is clamped to ``[_MIN_EXPONENT, 0]``,
    the diagonal set to exactly 0, and ``exp2`` (measured faster than ``exp`` on CPU)
    gives the Bhattacharyya kernel.  The KL kernel is its fourth power (two in-place
    squarings instead of a second exponential).  Every row sum holds ``2^0 = 1`` and lies
    in ``[1, n]``: no max-shift is needed.  Each block's sums are taken in the working
    dtype and accumulated across blocks in float64.

    Scratch: two blocks of the working dtype, and a float64 one for the matmul when float32
    rounding could exceed ``_MATMUL_TOLERANCE`` (see :func:`_matmul_dtype`).  On CPU a
    block is sized to stay in cache (``_CPU_BLOCK_BYTES``, but with at least ``d + 2`` rows,
    from 32 to 256, for the matmul's sake); elsewhere to ``budget``.  With the ``"numba"``
    engine everything after the matmul is one fused pass (sums in float32 within a tile of
    columns, float64 beyond) and blocks have ``_NUMBA_ROWS`` rows, within ``budget``.
    """
    n = int(t.shape[0])
    dtype, device = t.dtype, t.device
    u = (t - t.mean(dim=0, keepdim=True)) * math.sqrt(math.log2(math.e) / (8.0 * noise_var))
    sq = (u * u).sum(dim=1, keepdim=True)
    # the cancellation bound of _matmul_dtype is in natural-log units of the KL exponent
    mm_dtype = _matmul_dtype(dtype, device, float(sq.max()) * math.log(2.0) if n else 0.0)
    if mm_dtype != dtype:
        # squared norms in the wide dtype too: equal rows then cancel to ~1e-16, not ~1e-7
        u = u.to(mm_dtype)
        sq = (u * u).sum(dim=1, keepdim=True)
    ones = torch.ones(n, 1, dtype=mm_dtype, device=device)
    left = torch.cat([2.0 * u, -sq, -ones], dim=1)             # (n, d + 2)
    right = torch.cat([u, ones, sq], dim=1).T.contiguous()     # (d + 2, n)
    itemsize = t.element_size()
    engine = kde_engine(n, dtype, device)
    if engine == "numba" and not bool(torch.isfinite(sq).all()):
        engine = "torch"  # the fused pass assumes finite values; torch carries a NaN through
    if engine == "numba":
        per_row = n * (itemsize + (8 if mm_dtype != dtype else 0))
        rows = max(1, min(n, _NUMBA_ROWS, chunk_rows(n, per_row, budget)))
    else:
        per_row = n * (2 * itemsize + (8 if mm_dtype != dtype else 0))
        rows = _block_rows(n, per_row, budget, device, int(t.shape[1]))
    # flat buffers, viewed as contiguous (b, n - i0) blocks as the triangle narrows
    neg_buf = torch.empty(rows * n, dtype=dtype, device=device)
    ker_buf = torch.empty(rows * n, dtype=dtype, device=device) if engine == "torch" else None
    wide_buf = (torch.empty(rows * n, dtype=mm_dtype, device=device)
                if mm_dtype != dtype else None)
    kl = torch.zeros(n, dtype=torch.float64, device=device)
    bd = torch.zeros(n, dtype=torch.float64, device=device)
    pairs = 0
    with _jit.kernel_call() if engine == "numba" else contextlib.nullcontext():
        if engine == "numba":
            fused = _KERNELS.module().block_sums
            kl_np, bd_np = kl.numpy(), bd.numpy()
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            b, m = r1 - r0, n - r0
            pairs += b * m
            nb = neg_buf[:b * m].view(b, m)
            if wide_buf is None:
                torch.mm(left[r0:r1], right[:, r0:], out=nb)
            else:
                wb = wide_buf[:b * m].view(b, m)
                torch.mm(left[r0:r1], right[:, r0:], out=wb)
                nb.copy_(wb)
            nb.diagonal().fill_(0.0)
            if engine == "numba":
                fused(nb.numpy(), b, bd_np[r0:r1], kl_np[r0:r1], bd_np, kl_np, r0)
                continue
            nb.clamp_(min=_MIN_EXPONENT, max=0.0)
            kb = ker_buf[:b * m].view(b, m)
            torch.exp2(nb, out=kb)                                 # exp(-D / (8 s2))
            # sums in the working dtype (a float64 accumulating sum is much slower on CPU),
            # then accumulated in float64 across blocks
            bd[r0:r1] += kb.sum(dim=1)
            bd[r1:] += kb[:, b:].sum(dim=0)
            kb.square_().square_()                                 # exp(-D / (2 s2))
            kl[r0:r1] += kb.sum(dim=1)
            kl[r1:] += kb[:, b:].sum(dim=0)
    log_n = math.log(n)
    info = {"chunk_rows": rows, "pairs": pairs, "engine": engine}
    return kl.log_().sub_(log_n), bd.log_().sub_(log_n), info


def _matmul_dtype(dtype: torch.dtype, device: torch.device, max_sq: float) -> torch.dtype:
    """float64 for the distance matmul when float32 rounding could move the result.

    ``|a|^2 + |b|^2 - 2 a.b`` loses up to a few ``eps max|u|^2`` to cancellation, and the KL
    exponent is four times the computed one; shifting every exponent of a row by at most
    delta moves its log-sum by at most delta.  The loss only matters for pairs that are
    close (far pairs have kernels near 0 either way), most of all rows that coincide, as a
    deterministic map of repeated inputs produces: measured on such data the KL error is
    1 to 3 ``eps max|u|^2``.  So the matmul is widened when ``4 eps max|u|^2`` exceeds
    ``_MATMUL_TOLERANCE``, which happens when s2 is small next to the spread of T.  A
    reduced-precision float32 matmul (TF32 on CUDA, or any
    ``torch.set_float32_matmul_precision`` other than "highest") is taken at bfloat16's
    unit roundoff.
    """
    if dtype == torch.float64:
        return dtype
    reduced = torch.get_float32_matmul_precision() != "highest" or (
        device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)
    eps = 2.0 ** -8 if reduced else float(torch.finfo(dtype).eps)
    return torch.float64 if 4.0 * eps * max_sq > _MATMUL_TOLERANCE else dtype


#: Rows up to which ``n_permutations="auto"`` runs KDE's label-shuffle check.
AUTO_NULL_MAX_ROWS = 4096


class KDE(Estimator):
    r"""Kolchinsky-Tracey pairwise-distance bounds on H(T + noise), and the MI built on them.

    The sample ``t_1..t_n`` of T (rows; trailing dimensions flattened to d) is read as the
    mixture ``p(u) = 1/n sum_i N(u; t_i, s2 I)``, i.e. the distribution of ``T + Z`` with
    ``Z ~ N(0, s2 I)`` independent noise of variance ``s2 = noise_var``.  With
    ``h_Z = d/2 ln(2 pi e s2)`` the entropy of one component:

    .. math::

        H_{KL} = h_Z - \frac1n \sum_i \ln \frac1n \sum_j e^{-\|t_i-t_j\|^2/(2 s_2)}
        \;\ge\; H(T+Z) \;\ge\;
        H_{BD} = h_Z - \frac1n \sum_i \ln \frac1n \sum_j e^{-\|t_i-t_j\|^2/(8 s_2)}

    (the pairwise KL divergence between two components is ``||t_i-t_j||^2 / (2 s2)``, the
    Bhattacharyya distance ``||t_i-t_j||^2 / (8 s2)``).  ``bound`` picks which one is the
    value; ``details`` carries both.

    What each call computes:

    - ``entropy(T)``: the bound on H(T + Z).
    - ``mutual_information(T, Y)`` with Y discrete (labels, token ids):
      ``I = H(T+Z) - sum_y p(y) H(T+Z | Y=y)``, each term bounded the same way on the rows of
      class y.  The difference of two upper (or two lower) bounds is not itself a bound; it is
      the estimator of Saxe et al. and Kolchinsky et al. (2019).
    - ``mutual_information(X, T, ...)`` with both continuous, only with
      ``deterministic=True``: the deterministic-map reading of Saxe et al. (2018).  **T is
      the second argument** and is a deterministic function of X (a layer's output for input
      X), so ``H(T+Z | X) = h_Z`` exactly and ``I(X; T+Z) = H(T+Z) - h_Z``.  X itself is not
      used beyond pairing the rows; here the KL and BD values are true upper and lower
      bounds on ``I(X; T+Z)``.  Equal rows of X with different rows of T are flagged.
      Otherwise two continuous arrays raise a ValueError: for other pairs ``H(T+Z) - h_Z``
      is not their MI (independent 2 + 2-dim Gaussians read 3.3 nats); use "ksg"/"auto".

    Parameters
    ----------
    noise_var : float, default 0.1
        Variance s2 of the added Gaussian noise (per coordinate), in the units of T squared.
        It sets the resolution: the value changes with it, and a sweep over several values
        belongs in the analysis layer.  ``"auto"``: chosen from T's own scale, (r_k / 2)^2
        with r_k the median distance to the ceil(sqrt(n))-th neighbour, so the value is
        neither saturated at ln n nor 0 (:mod:`ibtools.estimators.resolution`).
    bound : {"upper", "lower"}, default "upper"
        ``"upper"``: the KL bound (the number Saxe et al. report); ``"lower"``: the
        Bhattacharyya bound.
    deterministic : bool, default False
        Declare that the second of two continuous arguments (T) is a deterministic function
        of the first (X); required for them (the analysis sets it for I(X;T), I(T_prev;T)).
        CLI: ``ibtools estimate X T --method kde --set deterministic=true``.
    transform : None, "standardize" or "copula"
        Marginal transform of continuous inputs before estimating (see
        :mod:`ibtools.estimators.transforms`); s2 is then in standardized units.
    **common
        ``seed``, ``device``, ``dtype``, ``memory_budget``, ``ci`` (``"subsample"`` first:
        a bootstrap duplicates rows, which doubles kernel weights), ``n_resamples``,
        ``confidence``, ``n_permutations``; see :class:`~ibtools.estimators.base.Estimator`.

    Returns
    -------
    EstimateResult
        ``details`` holds ``h_upper``, ``h_lower`` (H(T+Z) bounds), ``h_noise`` (h_Z), for MI
        ``mi_upper``, ``mi_lower`` and, with discrete Y, the per-class conditional bounds;
        ``resolved_upper`` (``H_KL - h_Z``), its ceiling ``ln n``, ``mean_self_weight`` (the
        average share of a row's own kernel in its mixture density), ``chunk_rows``, ``pairs``
        (kernel entries computed) and ``engine`` (``"torch"`` or ``"numba"``, see
        :func:`kde_engine`).

    Notes
    -----
    Bias and assumptions.  The estimate is of ``T + Z``, not of T: it depends on ``s2`` by
    construction, and the empirical mixture treats the n rows as the whole distribution (no
    correction for unseen points).  ``H_KL`` is exact when the components do not overlap
    and when they coincide, and in between the gap can be sizeable, so report the pair.
    When s2 is small next to the spacing of the
    rows, every row is its own kernel and ``H - h_Z`` reaches its ceiling ``ln n`` whatever
    the data: the result is then flagged as saturated.  When s2 is large next to the spread
    of T, everything merges into one kernel and the MI goes to 0.  Cost O(n^2 d), in blocks of
    rows sized to ``memory_budget``; no n x n matrix is built.

    References
    ----------
    .. [1] A. Kolchinsky and B. D. Tracey, "Estimating mixture entropy with pairwise
       distances", Entropy 19(7):361, 2017.
    .. [2] A. Kolchinsky, B. D. Tracey and D. H. Wolpert, "Nonlinear information
       bottleneck", Entropy 21(12):1181, 2019.
    .. [3] A. M. Saxe et al., "On the information bottleneck theory of deep learning",
       ICLR 2018.
    """

    name = "kde"
    limitations = (
        "Pairwise-distance bounds on T + N(0, noise_var I): the value depends on noise_var "
        "and saturates at ln n when noise_var is small next to the spread of T.")
    bounded_by_sample_size = True
    #: Label shuffles of the automatic independence check (I(T;Y) with class labels only).
    auto_permutations = 20
    defaults = {"noise_var": 0.1, "bound": "upper", "deterministic": False}
    interval_kinds = ("subsample", "bootstrap")
    supports_transform = True
    handles_discrete_x = False
    handles_entropy_of_discrete = False
    stochastic = False

    def _check_settings(self) -> None:
        if resolution.is_auto(self.noise_var):
            self.noise_var = resolution.AUTO
        elif isinstance(self.noise_var, str):
            raise TypeError(f"noise_var={self.noise_var!r} is not accepted; use a number > 0 "
                             f"or 'auto' (chosen from the data's scale)")
        else:
            check_positive(self.noise_var, "noise_var")
        check_choice(self.bound, "bound", ("upper", "lower"))
        if not isinstance(self.deterministic, bool):
            raise TypeError(f"deterministic must be True or False; got {self.deterministic!r}")

    # -- the pairwise bounds -------------------------------------------------------------------

    @contextlib.contextmanager
    def reuse_bounds(self):
        """Within this block, compute the whole-sample H(T+Z) bounds of a T once.

        An analysis asks for I(T;Y), I(X;T) and I(T_prev;T) of the same layer T in a row,
        and this O(n^2 d) term is the same in all three::

            est = KDE(noise_var=0.1)
            with est.reuse_bounds():
                i_ty = est.mutual_information(t, labels)
                i_xt = est.mutual_information(x, t)      # T's bounds are not recomputed

        The last T's result is kept with a reference to T itself (so its memory cannot be
        reused by another tensor while the entry lives) and its version counter, so an
        in-place torch change is seen.  Changes torch cannot see, such as writing into a
        NumPy array whose memory T shares, are not: do not change the inputs inside the
        block.  Outside such a block nothing is cached.
        """
        self._reuse_depth = getattr(self, "_reuse_depth", 0) + 1
        try:
            yield self
        finally:
            self._reuse_depth -= 1
            if not self._reuse_depth:
                self._last_bounds = None

    def _bounds(self, t: torch.Tensor) -> dict:
        """H(T+Z) bounds of one sample, with the saturation diagnostics (cached inside
        :meth:`reuse_bounds` only)."""
        if not getattr(self, "_reuse_depth", 0) or t.shape[0] < 1024:
            # per-class slices and small samples are not worth keeping
            return self._compute_bounds(t)
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype, t.device, t._version,
               float(self.noise_var), self._budget(t.device))
        cached = getattr(self, "_last_bounds", None)
        if cached is not None and cached[0] == key:
            return dict(cached[2])
        result = self._compute_bounds(t)
        self._last_bounds = (key, t, result)  # t held: its address stays its own
        return dict(result)

    def _compute_bounds(self, t: torch.Tensor) -> dict:
        s2 = float(self.noise_var)
        n, d = int(t.shape[0]), int(t.shape[1])
        log_kl, log_bd, info = pairwise_log_means(t, s2, self._budget(t.device))
        h_noise = gaussian_noise_entropy(d, s2)
        resolved_kl = -float(log_kl.mean())
        resolved_bd = -float(log_bd.mean())
        # exp(-ln n - L_i) = 1 / sum_j k_ij: the weight of row i's own kernel at t_i
        self_weight = float(torch.exp(-math.log(n) - log_kl).mean())
        return {"h_upper": h_noise + resolved_kl, "h_lower": h_noise + resolved_bd,
                "h_noise": h_noise, "resolved_upper": resolved_kl, "resolved_lower": resolved_bd,
                "ceiling": math.log(n), "mean_self_weight": self_weight, **info, "n": n}

    def _saturation_flags(self, b: dict) -> list:
        if b["n"] < 2 or b["resolved_upper"] < SATURATION_FRACTION * b["ceiling"]:
            return []
        return [f"saturated: with noise_var={self.noise_var:g} every sample is nearly its own "
                f"kernel (H_KL - h_noise = {b['resolved_upper']:.4f} nats of the ceiling "
                f"ln n = {b['ceiling']:.4f}; mean self-weight {b['mean_self_weight']:.3f}), so "
                f"the value reflects n, not the data; use noise_var=auto (a variance from the "
                f"data's neighbour distances), raise noise_var or add samples"]

    def _finish(self, quantity, run, tensors, n, dims, device, extra=None):
        """With ``noise_var='auto'`` the variance comes from the layer's whole sample
        (:func:`ibtools.estimators.resolution.kde_noise_var`) before any resample, and is
        recorded in ``details['auto_resolution']`` and the result's params."""
        with resolution.kde_auto(self, tensors) as record:
            result = super()._finish(quantity, run, tensors, n, dims, device, extra)
        if record is not None:
            result.details["auto_resolution"] = record
        return result

    def _pick(self, upper: float, lower: float) -> float:
        return upper if self.bound == "upper" else lower

    # -- estimator hooks -------------------------------------------------------------------------

    _SHARED_DETAILS = ("h_upper", "h_lower", "h_noise", "resolved_upper", "ceiling",
                       "mean_self_weight", "chunk_rows", "engine", "pairs")

    def _details(self, b: dict, **more) -> dict:
        """The whole-sample bounds and diagnostics every result carries, plus ``more``."""
        return {**{k: b[k] for k in self._SHARED_DETAILS},
                "noise_var": float(self.noise_var), **more}

    def _entropy(self, x, discrete, rng):
        b = self._bounds(x)
        details = self._details(b, quantity="H(T + N(0, noise_var I)), not H(T)")
        return self._pick(b["h_upper"], b["h_lower"]), details, self._saturation_flags(b)

    def _mi(self, x, y, x_discrete, y_discrete, rng):
        if y_discrete:
            return self._mi_discrete(x, y)
        if not self.deterministic:
            raise ValueError(
                "method='kde' on two continuous arrays measures I(X;T) only when T (the second "
                "argument) is a deterministic function of X, such as a layer's output for input "
                "X: it returns H(T+Z) - H(Z) and uses X only to pair the rows, so for any other "
                "pair (independent or noisy variables) the number is not their MI. Pass "
                "deterministic=True if T = f(X) (CLI: --set deterministic=true); if y holds "
                "class labels, pass discrete_y=True; otherwise use method='ksg' or "
                "method='auto'")
        # both continuous: I(X; T+Z) with T = y a deterministic function of X
        b = self._bounds(y)
        details = self._details(
            b, mi_upper=b["resolved_upper"], mi_lower=b["resolved_lower"],
            assumes="T (the second argument) is a deterministic function of X, so "
                    "H(T+Z|X) = d/2 ln(2 pi e noise_var); X enters only through the pairing "
                    "of rows")
        value = self._pick(b["resolved_upper"], b["resolved_lower"])
        return value, details, self._saturation_flags(b) + not_a_function_flag(x, y)

    def _null_needed(self, result) -> bool:
        """The automatic check runs for I(T;Y) with class labels, when the value is below
        half the label entropy: the class-conditional mixtures have fewer kernels than the
        whole one, so KDE reads above 0 at independence, the more so the more classes and
        the smaller the noise (0.075 nats at n = 500 with 10 classes on 1-d T), and only
        shuffling the labels tells that from dependence.  T's whole-sample bounds do not
        change under a shuffle and are computed once.  Two continuous variables (a
        deterministic map, ``deterministic=True``) have no null: every pairing reads the
        same.  Above ``AUTO_NULL_MAX_ROWS`` rows the shuffles' class passes cost several
        times the estimate (token labels put large classes through whole pairwise passes),
        so the check is left to an explicit ``n_permutations``."""
        d = result.details
        return ("h_labels" in d and result.value < 0.5 * d["h_labels"]
                and result.n <= AUTO_NULL_MAX_ROWS)

    def _null_values(self, run, x, y, perms) -> list:
        with self.reuse_bounds():
            return super()._null_values(run, x, y, perms)

    def _mi_discrete(self, t, labels):
        from ibtools.estimators.kde_classes import packed_class_bounds

        whole = self._bounds(t)
        n = int(t.shape[0])
        # sort once and slice each class: O(n log n), not O(n) per class (token ids can
        # have tens of thousands of classes)
        order = torch.argsort(labels, stable=True)
        t_sorted = t[order]
        counts = torch.bincount(labels).cpu()
        starts = torch.cumsum(counts, dim=0) - counts
        h_noise = whole["h_noise"]
        cond_upper = cond_lower = 0.0
        per_class = {}
        present = torch.nonzero(counts).flatten().tolist()
        packed = packed_class_bounds(t_sorted, counts, starts, present, h_noise,
                                     float(self.noise_var), self._budget(t.device))
        for cls in present:
            size, start = int(counts[cls]), int(starts[cls])
            if size == 1:  # one kernel: H(T+Z | Y=y) is the noise entropy exactly
                h_up = h_low = h_noise
            elif cls in packed:
                h_up, h_low = packed[cls]
            else:
                b = self._bounds(t_sorted[start:start + size])
                h_up, h_low = b["h_upper"], b["h_lower"]
            p = size / n
            cond_upper += p * h_up
            cond_lower += p * h_low
            per_class[int(cls)] = {"p": p, "h_upper": h_up, "h_lower": h_low}
        mi_upper = whole["h_upper"] - cond_upper
        mi_lower = whole["h_lower"] - cond_lower
        p = counts[counts > 0].to(torch.float64) / n
        h_labels = float(-(p * p.log()).sum())
        details = self._details(whole, mi_upper=mi_upper, mi_lower=mi_lower,
                                h_cond_upper=cond_upper, h_cond_lower=cond_lower,
                                h_labels=h_labels, n_classes=len(per_class))
        if len(per_class) <= 64:
            details["per_class"] = per_class
        flags = self._saturation_flags(whole)
        if flags:
            flags.append(f"with every sample its own kernel, I(T;Y) goes to the plug-in label "
                         f"entropy H(Y) = {h_labels:.4f} nats whatever T holds")
        return self._pick(mi_upper, mi_lower), details, flags

