"""The analysis-time noisy channel: each measured layer read as ``T + Z``, ``Z ~ N(0, S^2 I)``.

A deterministic network maps n distinct inputs to n distinct activations, so on a sample
I(X;T) is ln n whatever the network, and every difference an estimator reports between two
such networks is its own resolution.  Reading each layer through a Gaussian channel of
standard deviation S (Goldfeld et al. 2019; Saxe et al. 2018 for the KDE view) makes the
quantities finite and meaningful *at that S*: ``ibtools.analyze(..., noise_std=[0.1, 0.3])``
measures an unchanged network once per S.

How each estimator reads the channel:

- ``mixture`` and ``kde`` model it already: the Gaussian mixture centred at the activations
  with variance ``noise_var`` *is* the law of ``T + Z`` on the sample, so their ``noise_var``
  is set to S^2 and no noise is sampled (sampling it and then estimating would add a second
  channel and Monte Carlo error for nothing).  I(T_prev;T) is the noisy chain
  ``I(T_prev + Z'; T + Z)``: mixture's ``noisy_x`` form; KDE's as
  ``H(T_prev+Z') + H(T+Z) - H([T_prev, T] + Z'')`` from its chosen bound (each term a bound,
  their combination no bracket).
- every other estimator (binning, KSG, ...) gets sampled, seeded noise added to the captured
  activations: the same draw for a layer in each quantity it enters, X never noised.

Rows carry ``mode`` (``"deterministic"``, ``"analysis-noise"``, ``"trained-noise"``) and
``noise_std``; an analysis-noise row's setting label ends in ``@noise_std=S`` so a sweep
keeps one row set per S.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch

from ibtools.errors import InputError, InputTypeError
from ibtools.estimators.spec import EstimatorSpec

#: The ``mode`` column's values.
MODES = ("deterministic", "analysis-noise", "trained-noise")
#: Estimators whose model is the Gaussian channel itself: their noise_var becomes S^2.
CHANNEL_METHODS = ("mixture", "kde")
#: What a number of each mode means, for tables and reports.
MODE_MEANINGS = {
    "deterministic": "resolution-dependent: a deterministic layer on distinct inputs has "
                     "I(X;T) = ln n; the value reflects the estimator's resolution",
    "analysis-noise": "finite MI of the layer read through a Gaussian channel of std sigma "
                      "added at analysis time (an unchanged network)",
    "trained-noise": "finite MI of a network trained and evaluated with Gaussian noise of std "
                     "sigma after every block (Goldfeld et al. 2019)",
}


#: ``noise_scale`` values: S in the layer's own units, or in units of its scale (S times the
#: layer's root-mean-square coordinate deviation on the sample, :func:`layer_scale`).
NOISE_SCALES = ("absolute", "layer")
#: The label marker of each scale (a row's setting ends in ``<marker>S``).
_MARKERS = {"absolute": "@noise_std=", "layer": "@noise_rel="}


@dataclass(frozen=True)
class ChannelSpec(EstimatorSpec):
    """An estimator setting applied to layers read through the channel of std ``noise_std``
    (``scale="layer"``: ``noise_std`` times each layer's own scale)."""

    noise_std: float = 0.0
    scale: str = "absolute"

    @property
    def label(self) -> str:
        return f"{super().label}{_MARKERS[self.scale]}{self.noise_std:g}"

    @property
    def spec_string(self) -> str:
        return f"{super().spec_string}{_MARKERS[self.scale]}{self.noise_std!r}"


def check_noise_std(noise_std) -> list | None:
    """``noise_std`` of :func:`ibtools.analyze` as a list of floats > 0, or None."""
    if noise_std is None:
        return None
    values = [noise_std] if isinstance(noise_std, (int, float)) else noise_std
    try:
        values = list(values)
    except TypeError:
        raise InputTypeError(f"noise_std must be a number > 0 or a list of them (a sweep); got "
                             f"{noise_std!r}") from None
    out = []
    for s in values:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) \
                or s <= 0:
            raise InputError(f"noise_std: {s!r} is not accepted; each value must be a finite "
                             f"number > 0 (the standard deviation of the Gaussian channel "
                             f"added at every measured layer), or leave noise_std unset")
        out.append(float(s))
    if not out:
        raise InputError("noise_std is an empty list; give at least one value > 0 or None")
    if len(set(out)) != len(out):
        raise InputError(f"noise_std={out!r} repeats a value; give each once")
    return out


def check_noise_scale(noise_scale) -> str:
    """``noise_scale`` of :func:`ibtools.analyze`, one of :data:`NOISE_SCALES`."""
    if noise_scale not in NOISE_SCALES:
        raise InputError(f"noise_scale={noise_scale!r} is not accepted; use 'absolute' (S in "
                         f"the layer's units) or 'layer' (S times each layer's own scale, so "
                         f"a layer and a multiple of it read alike)")
    return noise_scale


def expand_specs(specs: list, noise_std: list | None, scale: str = "absolute") -> list:
    """One :class:`ChannelSpec` per (setting, S); mixture's and KDE's ``noise_var`` is S^2
    (on layers divided by their scale when ``scale="layer"``)."""
    if noise_std is None:
        if scale != "absolute":
            raise InputError(f"noise_scale={scale!r} needs noise_std (the channel's S); give "
                             f"noise_std or leave noise_scale at 'absolute'")
        return list(specs)
    out = []
    for s in noise_std:
        for spec in specs:
            settings = dict(spec.settings)
            if spec.method in CHANNEL_METHODS:
                if settings.get("transform") not in (None, "none"):
                    raise InputError(
                        f"estimator {spec.label!r} with noise_std: the channel's S is in the "
                        f"layer's own units, but transform={settings['transform']!r} would "
                        f"rescale the activations first; drop the transform")
                settings["noise_var"] = float(f"{s * s:.12g}")
            out.append(ChannelSpec(spec.method, settings, noise_std=s, scale=scale))
    return out


def sweep_of(specs: list) -> list | None:
    """The S values of a run's channel settings (for its config), or None."""
    values = sorted({s.noise_std for s in specs if isinstance(s, ChannelSpec)})
    return values or None


def label_modes(rows: list) -> list:
    """Fill each row's ``mode`` and ``noise_std`` (in place): a channel setting's S from its
    label, else the model's train-time std its checkpoint columns carry (0: deterministic)."""
    for r in rows:
        setting = str(r.get("setting", ""))
        marker = next((m for m in _MARKERS.values() if m in setting), None)
        if marker is not None:
            r["noise_std"] = float(setting.rsplit(marker, 1)[1])
            r["mode"] = "analysis-noise"
            continue
        std = r.get("noise_std")
        std = 0.0 if std is None or std != std or std == "" else float(std)
        r["noise_std"] = std
        r["mode"] = "trained-noise" if std > 0 else "deterministic"
    return rows


def layer_noise(noise_std: float, seed: int, index: int, like: torch.Tensor) -> torch.Tensor:
    """The seeded channel draw of layer ``index`` (the same each time it is asked for)."""
    key = zlib.crc32(f"{int(seed)}:{int(index)}:{float(noise_std)!r}".encode())
    gen = torch.Generator().manual_seed(key)
    z = torch.randn(tuple(like.shape), generator=gen, dtype=torch.float32)
    return (noise_std * z).to(device=like.device, dtype=like.dtype)


def layer_scale(t: torch.Tensor) -> float:
    """A layer's scale on the sample: the root of its coordinates' mean variance over rows
    (1.0 for a constant layer, which no channel can tell apart anyway)."""
    rows = t.reshape(t.shape[0], -1).double()
    scale = float(rows.var(dim=0, unbiased=False).mean().sqrt()) if rows.shape[0] > 1 else 0.0
    return scale if scale > 0 and math.isfinite(scale) else 1.0


def channel_view(spec, est, t, t_prev, index: int, seed: int):
    """``(t, t_prev, chain)`` to estimate from: the layers as the channel presents them and
    the estimator object (or callable) for I(T_prev;T).  Unchanged for a plain spec.  With
    ``scale="layer"`` each noised layer is first divided by :func:`layer_scale` (a bijection,
    so no information changes) and the channel of std S is read on that: S in units of the
    layer's own scale.  X (T_prev of the first layer) is never noised nor scaled."""
    if not isinstance(spec, ChannelSpec):
        return t, t_prev, est
    if spec.scale == "layer":
        t = t.float() / layer_scale(t)
        if index > 0:
            t_prev = t_prev.float() / layer_scale(t_prev)
    if spec.method in CHANNEL_METHODS:
        if index == 0:  # T_prev is X, observed without a channel: I(X; T+Z)
            return t, t_prev, est
        if spec.method == "mixture":
            return t, t_prev, type(est)(**dict(est.settings, noisy_x=True))
        return t, t_prev, _EntropyChain(est)
    noisy_t = t.float() + layer_noise(spec.noise_std, seed, index, t.float())
    if index == 0:
        return noisy_t, t_prev, est
    noisy_prev = t_prev.float() + layer_noise(spec.noise_std, seed, index - 1, t_prev.float())
    return noisy_t, noisy_prev, est


class _EntropyChain:
    """KDE's noisy chain: ``H(S+Z') + H(T+Z) - H([S, T] + Z'')`` from its chosen bound."""

    def __init__(self, est):
        self.est = est

    def mutual_information(self, s, t, **_):
        from dataclasses import replace

        s2, t2 = s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1)
        h_s, h_t = self.est.entropy(s2), self.est.entropy(t2)
        h_joint = self.est.entropy(torch.cat([s2.float(), t2.float()], dim=1))
        value = h_s.value + h_t.value - h_joint.value
        details = {"h_prev": h_s.value, "h": h_t.value, "h_joint": h_joint.value,
                   "assumes": "both layers read through independent Gaussian channels of "
                              "variance noise_var; each entropy is KDE's chosen bound, so "
                              "their combination brackets nothing"}
        return replace(h_t, value=value, quantity="mutual_information", ci=None, ci_kind=None,
                       flags=h_s.flags + h_t.flags + h_joint.flags, details=details)


# -- how reports name a number's mode -------------------------------------------------------

_TAGS = {"analysis-noise": "analysis noise σ={:g}", "trained-noise": "noisy net"}


def report_labels(prepared) -> None:
    """Tag a prepared table's labels with each row's mode (in place), so figure titles and
    legends say which numbers are finite MI at sigma and which are resolution-dependent:
    ``setting_label`` gets ``[deterministic]``, ``[analysis noise σ=S]`` (``σ=S × layer
    scale`` for a layer-relative channel) or ``[noisy net]``,
    and a noisy network's ``variant`` its ``noisy net σ=S`` (sigma belongs to the model).
    A table of deterministic rows only is left as it was."""
    if "mode" not in prepared.columns:
        return
    modes = prepared["mode"].astype(object).where(prepared["mode"].notna(), "deterministic")
    if set(modes) <= {"deterministic"}:
        return
    stds = prepared["noise_std"] if "noise_std" in prepared.columns else [float("nan")] * len(
        prepared)
    labels, variants = [], []
    for label, variant, mode, std in zip(prepared["setting_label"], prepared["variant"], modes,
                                         stds):
        relative = _MARKERS["layer"] in str(label)
        base = str(label).split(_MARKERS["layer" if relative else "absolute"])[0]
        tag = _TAGS[mode].format(float(std)) if mode in _TAGS else "deterministic"
        if relative and mode == "analysis-noise":
            tag += " × layer scale"
        labels.append(f"{base} [{tag}]")
        variants.append(f"{variant}, noisy net σ={float(std):g}" if mode == "trained-noise"
                        else variant)
    prepared["setting_label"] = labels
    prepared["variant"] = variants


def mode_sentence(prepared) -> str | None:
    """One sentence saying which mode the table's numbers come from and what that means;
    None for a table of deterministic rows only (its estimator notes say the rest)."""
    if "mode" not in prepared.columns:
        return None
    modes = prepared["mode"].astype(object).where(prepared["mode"].notna(), "deterministic")
    if set(modes) <= {"deterministic"}:
        return None
    parts = []
    for mode in MODES:
        rows = prepared[modes == mode]
        if rows.empty:
            continue
        if mode == "deterministic":
            parts.append(f"deterministic rows are {MODE_MEANINGS[mode]}")
            continue
        sigmas = ", ".join(f"{s:g}" for s in sorted(set(rows["noise_std"].astype(float))))
        parts.append(f"{mode} rows (σ = {sigmas}) are {MODE_MEANINGS[mode]}")
    return "Which numbers mean what: " + "; ".join(parts) + "."
