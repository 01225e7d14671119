"""Information flow in a network trained with noise: Goldfeld et al. (2019)'s sample propagation.

In a noisy network every block adds Gaussian noise, ``T_l = f_l(T_{l-1}) + Z_l``,
``Z_l ~ N(0, sigma^2 I)`` (the reference models' ``noise_std``).  The noise of earlier blocks
travels forward, so given the input the layer is no single Gaussian: ``h(T_l | X) != h(Z)``
from the second noisy block on, and the deterministic reading ``H(T+Z) - h(Z)`` overstates
I(X;T_l).  Goldfeld et al. estimate both entropies as Gaussian mixtures over noise paths:

- per input x_i, K forward passes (independent noise paths) give the pre-noise outputs
  ``mu_{i,k} = f_l(T_{l-1}^{(i,k)})``; T_l given x_i is the mixture
  ``1/K sum_k N(mu_{i,k}, sigma^2 I)``, whose entropy is ``h(T_l | X = x_i)``;
- T_l itself is the mixture of all n K centres; ``I(X;T_l) = h(T_l) - mean_i h(T_l|X=x_i)``.

The three quantities of the analysis come from one Monte Carlo over draws ``u = mu_c + z``
(a centre c, then noise; antithetic pairs), each draw scoring ``ln p(u|x_c) - ln p(u)``
(I(X;T)), ``ln p(u|y_c) - ln p(u)`` (I(T;Y), the class mixtures) and ``ln N(z) - ln p(u)``
(I(T_prev;T) = h(T) - h(Z): given the previous block's noisy output only the layer's own
noise is left; for measured layers that skip a noisy block it is, by data processing, an upper
bound), so their Monte Carlo standard errors are measured, not assumed.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from statistics import NormalDist

import torch
from torch import nn

from ibtools.errors import InputError
from ibtools.estimators.base import EstimateResult
from ibtools.estimators.kde import gaussian_noise_entropy
from ibtools.estimators.mixture_sampling import (
    MixtureExponents,
    quadratic_control,
    radial_features,
    shifted_kernel_,
)

__all__ = ["NoisyLayerInformation", "model_noise_std", "noise_paths",
           "noisy_network_information"]


def _noise_modules(model: nn.Module) -> list:
    from ibtools.models.layers import GaussianNoise

    return [m for m in model.modules() if isinstance(m, GaussianNoise) and m.std > 0]


def model_noise_std(model: nn.Module) -> float | None:
    """The std of the model's train-time noise (the largest, if blocks differ), or None."""
    stds = [m.std for m in _noise_modules(model)]
    return max(stds) if stds else None


def _layer_noise_module(model: nn.Module, name: str):
    """The noise module that ends layer ``name``: the layer itself or its child ``noise``."""
    from ibtools.models.layers import GaussianNoise

    modules = dict(model.named_modules())
    if name not in modules:
        raise InputError(f"layers: {name!r} is not a module of {type(model).__name__}; "
                         f"give module names such as 'layers.0'")
    module = modules[name]
    if isinstance(module, GaussianNoise) and module.std > 0:
        return module
    child = getattr(module, "noise", None)
    if isinstance(child, GaussianNoise) and child.std > 0:
        return child
    raise InputError(f"layers: {name!r} does not end in Gaussian noise (no noise module of std "
                     f"> 0 at its output), so T given the input is not a Gaussian mixture and "
                     f"the noisy-network estimate does not apply; measure block outputs "
                     f"('layers.{{i}}') of a model built with noise_std > 0")


@contextlib.contextmanager
def _seeded_noise(model: nn.Module, seed: int):
    """The model's noise streams restarted from ``seed``, and put back as they were after."""
    sources = {id(m.source): m.source for m in _noise_modules(model)}.values()
    saved = [(s, s.seed, {k: g.get_state() for k, g in s._generators.items()}) for s in sources]
    try:
        for s in sources:
            s.reseed(seed)
        yield
    finally:
        for s, old_seed, states in saved:
            s.reseed(old_seed)
            for key, state in states.items():
                s.generator(torch.device(key)).set_state(state)


@torch.no_grad()
def noise_paths(model: nn.Module, x: torch.Tensor, layers: list, n_paths: int = 8,
                seed: int = 0, batch_size: int = 256, per_token: bool = False) -> dict:
    """Pre-noise outputs of each layer over ``n_paths`` noise paths per input.

    Returns ``{name: (centres (n, n_paths, d), sigma)}``: ``centres[i, k]`` is
    ``f_l(T_{l-1})`` on path k of input i (the input of the layer's noise module), sigma the
    std of that module.  With ``per_token`` (sequence models, outputs ``(B, T, C)``) a row is
    one position of one input: ``n = B T`` rows (input-major) of ``d = C``; otherwise a
    row is one input, its output flattened.  The model runs in its current mode; its noise
    streams are seeded with ``seed`` and restored afterwards, so a training run is not
    disturbed.
    """
    if isinstance(n_paths, bool) or not isinstance(n_paths, int) or n_paths < 2:
        raise InputError(f"n_paths={n_paths!r} is not accepted; use an int >= 2 (noise paths "
                         f"per input: h(T|X) is a mixture over them)")
    modules = {name: _layer_noise_module(model, name) for name in layers}
    device = next((p.device for p in model.parameters()), x.device)
    seen: dict = {}

    def rows_of(out: torch.Tensor) -> torch.Tensor:
        if per_token:
            if out.dim() != 3:
                raise InputError(f"per_token rows need (B, T, C) block outputs; got shape "
                                 f"{tuple(out.shape)}")
            return out.detach().reshape(-1, out.shape[-1]).float()
        return out.detach().flatten(1).float()

    hooks = [m.register_forward_hook(
        lambda mod, args, out, name=name: seen.setdefault(name, []).append(rows_of(args[0])))
        for name, m in modules.items()]
    try:
        with _seeded_noise(model, seed):
            for _ in range(n_paths):
                for start in range(0, int(x.shape[0]), batch_size):
                    model(x[start:start + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
    n = int(x.shape[0]) * (int(x.shape[1]) if per_token else 1)
    out = {}
    for name, m in modules.items():
        flat = torch.cat(seen[name])                       # (n_paths * n, d), path-major
        out[name] = (flat.view(n_paths, n, -1).transpose(0, 1).contiguous(), float(m.std))
    return out


@dataclass
class NoisyLayerInformation:
    """The noisy-network quantities of one layer, as results of the analysis' type."""

    i_xt: EstimateResult
    i_ty: EstimateResult
    i_prev_t: EstimateResult
    details: dict = field(default_factory=dict)


def _path_monte_carlo(centres, labels, noise_var, gen, tolerance, max_draws, block=256):
    """Means and standard errors of the per-draw scores (I(X;T), I(T;Y), I(T_prev;T),
    h(T) - h(Z), h(T|X) - h(Z)), drawing until each error is below ``tolerance``.

    Each antithetic pair carries the mixture estimator's control variates (mean exactly 0
    at any centre: the radial score of its noise vector, ``s`` and ``s^2 - 1``, and the
    second-order term of its log-sum-exp over its nearest centres; see
    :mod:`ibtools.estimators.mixture_sampling`).  Their coefficients are fitted per score
    by least squares on all draws so far, and the mean and standard error are those of the
    adjusted draws; centres are drawn with replacement, so the draws are independent.
    """
    n, k, d = centres.shape
    mix = MixtureExponents(centres.reshape(n * k, d), noise_var, 0.1 * tolerance)
    dev = centres.device
    flat_labels = labels.to(dev).repeat_interleave(k)                     # (n k,)
    log_counts = torch.bincount(flat_labels).to(torch.float64).clamp(min=1).log()
    onehot = torch.nn.functional.one_hot(flat_labels).to(mix.mm_dtype)   # (n k, classes)
    offsets = torch.arange(k, device=dev)
    log_nk, log_k, sigma = math.log(n * k), math.log(k), math.sqrt(noise_var)

    def scores(c, z):
        """(5, b) scores of the antithetic pairs ``mu_c +- z`` and their (3, b) control
        variates."""
        b = int(c.numel())
        c, z = torch.cat([c, c]), torch.cat([z, -z])
        e = mix.exponents(c, z)                                           # (2b, n k)
        quad = quadratic_control(mix, c, e)                               # before e is spent
        # the path mixture of x_c, before e is spent; its own centre's exponent is 0, so
        # this log-sum-exp is >= 0 and never underflows
        own = torch.logsumexp(e.gather(1, (c // k)[:, None] * k + offsets).to(torch.float64),
                              dim=1)
        kernel, top = shifted_kernel_(e)                                  # exp(e - top)
        top = top[:, 0].to(torch.float64)
        whole = kernel.sum(dim=1).to(torch.float64).log() + top - log_nk  # ln p(u) + const
        per_class = (kernel @ onehot).gather(1, flat_labels[c][:, None])[:, 0]
        # a class sum that underflowed (every term below e^-85 of the top) is its own
        # path mixture's at least
        in_class = torch.maximum(per_class.to(torch.float64).log() + top, own)
        given_y = in_class - log_counts[flat_labels[c]]
        given_x = own - log_k
        v = torch.stack([given_x - whole, given_y - whole, -whole, -whole, -given_x])
        features = radial_features([(z[:b], noise_var)]) + [quad]
        return 0.5 * (v[:, :b] + v[:, b:]), torch.stack(features).to(torch.float64)

    values, features = [], []
    draws = 0
    while True:
        c = torch.randint(n * k, (block,), generator=gen, device=dev)
        z = sigma * torch.randn((block, d), generator=gen, device=dev)
        v, h = scores(c, z)
        values.append(v)
        features.append(h)
        draws += block
        mean, se = _adjusted_mean(torch.cat(values, dim=1), torch.cat(features, dim=1))
        if (draws >= 4 * block and float(se[:3].max()) <= tolerance) or draws >= max_draws:
            return mean.tolist(), se.tolist(), draws


def _adjusted_mean(values: torch.Tensor, features: torch.Tensor):
    """Mean and standard error per row of (columns, N) independent draws ``values``, less
    their (p, N) control variates (mean exactly 0) times least-squares coefficients (not
    fitted below 40 draws per control variate)."""
    p, count = int(features.shape[0]), int(values.shape[1])
    if p and count >= 40 * p:
        x = (features - features.mean(dim=1, keepdim=True)).T            # (N, p)
        gram = x.T @ x
        gram.diagonal().add_(1e-12 * float(gram.diagonal().max()) + 1e-300)
        beta = torch.linalg.solve(gram, x.T @ (values - values.mean(dim=1, keepdim=True)).T)
        values = values - beta.T @ features
    else:
        p = 0
    mean = values.mean(dim=1)
    # the fitted coefficients use p degrees of freedom of the residual spread
    var = (values - mean[:, None]).square().sum(dim=1) / max(count - 1 - p, 1)
    return mean, (var / count).sqrt()


def _result(value, se, n, d, noise_var, seconds, details, tolerance, confidence=0.95):
    half = NormalDist().inv_cdf(0.5 + confidence / 2.0) * se
    flags = ([(f"Monte Carlo error: standard error {se:.4f} nats exceeds mc_tolerance="
               f"{tolerance:g}; raise max_draws")] if se > tolerance else [])
    return EstimateResult(value=float(value), quantity="mutual_information",
                          method="noisy-network", params={"noise_var": noise_var}, n=n,
                          dims=(d,), seconds=seconds, ci=(value - half, value + half),
                          ci_kind="mc", confidence=confidence, flags=flags,
                          details=dict(details, mc_se=se))


def noisy_network_information(model: nn.Module, x, y, layers, noise_std: float | None = None,
                              n_paths: int = 8, seed: int = 0, mc_tolerance: float = 0.01,
                              max_draws: int = 65536, batch_size: int = 256,
                              rows=None) -> dict:
    """I(X;T_l), I(T_l;Y) and I(T_{l-1};T_l) of a noisy network (Goldfeld et al. 2019).

    Parameters
    ----------
    model : nn.Module
        A network with Gaussian noise after its measured layers (a reference model built
        with ``noise_std > 0``); its noise runs in training and evaluation mode alike.
    x : Tensor (n, ...)
        Inputs, one row per sample, as the model takes them.
    y : Tensor (n,) or (B, T)
        Integer class labels, one per input; or, for a language model taking token ids
        ``x`` of shape ``(B, T)``, one label per position (the next token), ``y.shape ==
        x.shape``: then a row is one position of one sequence (``B T`` rows, input-major),
        T_l its block output there (the ``C`` features), X its context, and h(T_l|X) the
        mixture over that position's noise paths.
    layers : list of str
        Module names whose output ends in noise: block outputs ``"layers.{i}"`` /
        ``"blocks.{i}"`` (or the noise modules themselves).
    noise_std : float, optional
        The noise's std; ``None`` reads each layer's noise module.  A value that differs from
        the module's is refused: the conditional density would be wrong.
    n_paths : int, default 8
        Noise paths K per input.  The first noisy layer needs none beyond one (given x its
        output is exactly N(f(x), sigma^2 I)); deeper layers' h(T|X) is a K-component mixture,
        biased low for small K, which biases I(X;T) high.
    seed : int
        Seeds the noise paths (the model's streams are restored afterwards) and the draws.
    mc_tolerance : float
        Target Monte Carlo standard error of each quantity, in nats (flagged when missed).
    max_draws : int
        Most antithetic draw pairs.
    batch_size : int
        Inputs per forward pass.
    rows : Tensor (m,) of int, optional
        Keep only these rows (of the ``n`` inputs, or of the ``B T`` positions), after the
        forward passes: the analysis measures a sample of token rows.

    Returns
    -------
    dict
        ``{layer: NoisyLayerInformation}`` with ``i_xt``, ``i_ty``, ``i_prev_t``
        (:class:`~ibtools.estimators.base.EstimateResult`, ``ci`` +- 1.96 Monte Carlo se) and
        ``details`` (``h_t``, ``h_t_given_x``, ``h_noise``, ``draws``, ``n_paths``,
        ``noise_std``).

    Notes
    -----
    The n K centres are the whole distribution of the mixture, as in
    :class:`~ibtools.estimators.mixture.MixtureEntropy`: the Monte Carlo error is measured,
    the sampling error of n inputs is not.  For one noisy linear layer on Gaussian input the
    value tends to ``0.5 ln det(I + A S A^T / sigma^2)`` as n grows (tested).

    References
    ----------
    .. [1] Z. Goldfeld, E. van den Berg, K. Greenewald, I. Melnyk, N. Nguyen, B. Kingsbury
       and Y. Polyanskiy, "Estimating information flow in deep neural networks", ICML 2019.
    """
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    per_token = (y.ndim == 2 and x.ndim == 2 and tuple(y.shape) == tuple(x.shape)
                 and not x.dtype.is_floating_point)
    if y.dtype.is_floating_point or not (per_token or (y.ndim == 1
                                                       and y.shape[0] == x.shape[0])):
        raise InputError(f"y must hold one integer class label per row of x ({x.shape[0]}), "
                         f"or one per position of token ids x {tuple(x.shape)}; got shape "
                         f"{tuple(y.shape)}, dtype {y.dtype}")
    y = y.reshape(-1)
    if rows is not None:
        rows = torch.as_tensor(rows).reshape(-1).long()
        if rows.numel() == 0 or int(rows.min()) < 0 or int(rows.max()) >= int(y.shape[0]):
            raise InputError(f"rows must index the {int(y.shape[0])} rows (inputs, or "
                             f"positions of token ids); got {rows.numel()} indices in "
                             f"[{int(rows.min()) if rows.numel() else 0}, "
                             f"{int(rows.max()) if rows.numel() else 0}]")
        y = y[rows]
    if not isinstance(mc_tolerance, (int, float)) or not mc_tolerance > 0:
        raise InputError(f"mc_tolerance={mc_tolerance!r} must be a number > 0 (nats)")
    layers = [layers] if isinstance(layers, str) else list(layers)
    paths = noise_paths(model, x, layers, n_paths=n_paths, seed=seed, batch_size=batch_size,
                        per_token=per_token)
    if rows is not None:
        paths = {name: (centres[rows.to(centres.device)], sigma)
                 for name, (centres, sigma) in paths.items()}
    gen_device = next(iter(paths.values()))[0].device if paths else torch.device("cpu")
    out = {}
    for index, name in enumerate(layers):
        centres, sigma = paths[name]
        if noise_std is not None and not math.isclose(float(noise_std), sigma, rel_tol=1e-6):
            raise InputError(f"noise_std={noise_std!r} differs from the std {sigma:g} of layer "
                             f"{name!r}'s noise module; leave noise_std=None to read it")
        gen = torch.Generator(device=gen_device).manual_seed(int(seed) * 1009 + index)
        start = time.perf_counter()
        mean, se, draws = _path_monte_carlo(centres, y.long(), sigma * sigma, gen,
                                            float(mc_tolerance), int(max_draws))
        seconds = time.perf_counter() - start
        n, d = int(centres.shape[0]), int(centres.shape[2])
        h_noise = gaussian_noise_entropy(d, sigma * sigma)
        details = {"h_t": h_noise + mean[3], "h_t_given_x": h_noise + mean[4],
                   "h_noise": h_noise, "draws": draws, "n_paths": n_paths, "noise_std": sigma,
                   "ceiling": math.log(n * n_paths)}
        res = [_result(mean[j], se[j], n, d, sigma * sigma, seconds, details,
                       float(mc_tolerance)) for j in range(3)]
        out[name] = NoisyLayerInformation(*res, details=details)
    return out


# -- the analysis' use ----------------------------------------------------------------------

def check_single_channel(model: nn.Module, specs: list, label: str) -> float | None:
    """The model's train-time noise std (None without), refusing an analysis-time channel on
    top of it: two channels would measure neither network."""
    from ibtools.noise_channel import ChannelSpec

    std = model_noise_std(model)
    if std and any(isinstance(s, ChannelSpec) for s in specs):
        raise InputError(f"checkpoint {label!r} was trained with noise (noise_std={std:g} in "
                         f"its blocks), so its rows are measured as a noisy network; "
                         f"noise_std at analysis time would add a second channel. Leave "
                         f"noise_std unset for noisy models")
    return std


def checkpoint_paths(model: nn.Module, dataset, x, y, names: list, specs: list, seed: int,
                     trained_std: float | None, tokens=None, n_paths: int = 8) -> dict | None:
    """Per layer of a noisy network, the (result, error) pairs of I(T;Y), I(X;T) and
    I(T_prev;T) from noise paths, for the mixture estimator's rows; None when the model has
    no noise or no mixture setting is asked for.

    ``tokens``: for a language model's rows, ``(sample_ids, positions)`` of each row (the
    activations' columns; ``positions`` None when the rows are pooled sequences, which noise
    paths do not measure); ``n_paths``: noise paths per input (``analyze(noise_paths=...)``)."""
    if not trained_std or not any(s.method == "mixture" for s in specs):
        return None
    inputs = getattr(dataset, "inputs", None)
    select = None
    if getattr(dataset, "kind", None) == "language":
        samples, positions = tokens if tokens is not None else (None, None)
        if positions is None or inputs is None:
            why = ("noise paths of a language model are measured per token; these rows are "
                   "pooled over positions (or the sequences are not at hand), so the noisy-"
                   "network estimate does not apply; analyse without pooling")
            return {name: ((None, why),) * 3 for name in names}
        # the sequences the rows come from, each run once per noise path; a row is one
        # position of one of them
        used, inverse = torch.unique(samples.long(), return_inverse=True)
        x_in = inputs[used]
        y = dataset.targets[used]
        select = inverse * int(inputs.shape[1]) + positions.long()
    else:
        x_in = x.reshape(int(x.shape[0]), *inputs.shape[1:]) if inputs is not None else x
    out, usable = {}, []
    for name in names:
        try:
            _layer_noise_module(model, name.split("#")[0])
            usable.append(name)
        except ValueError as exc:
            out[name] = ((None, str(exc)),) * 3
    if usable:  # a mixture setting's mc_tolerance applies to the paths' Monte Carlo too
        tol = next((s.settings.get("mc_tolerance") for s in specs if s.method == "mixture"
                    and "mc_tolerance" in s.settings), 0.01)
        info = noisy_network_information(model, x_in, y, [n.split("#")[0] for n in usable],
                                         n_paths=n_paths, seed=seed, mc_tolerance=tol,
                                         rows=select)
        for name in usable:
            layer = info[name.split("#")[0]]
            out[name] = ((layer.i_ty, None), (layer.i_xt, None), (layer.i_prev_t, None))
    return out


def layer_paths(paths: dict | None, spec, name: str):
    """The noise-path results of this layer for a plain mixture setting, else None."""
    from ibtools.noise_channel import ChannelSpec

    if paths is None or spec.method != "mixture" or isinstance(spec, ChannelSpec):
        return None
    return paths.get(name)
