"""Pieces every reference model shares: the ``norm=`` factory and the model base class.

``norm`` is one of :data:`NORM_CHOICES` or a normalization class.  ``"ib-S"``, ``"ib-L"``
and ``"ib-T"`` build the IBNorm flavour of the model's own baseline family (IBNorm for a
LayerNorm model, IBRMSNorm for the LLaMA-style model, IBBatchNorm for the CNN); pass a
class such as :class:`ibtools.norms.IBBatchNorm1d` to choose another flavour.
"""

from __future__ import annotations

import importlib
import math

import torch
from torch import nn

from ibtools.errors import InputError
from ibtools.norms import IBBatchNorm1d, IBBatchNorm2d, IBNorm, IBNormMixin, IBRMSNorm
from ibtools.norms import functional as IBF
from ibtools.norms.state import adapt_norm_state_dict

__all__ = ["NORM_CHOICES", "LAYOUTS", "GaussianNoise", "MovedDimNorm", "NoiseSource",
           "ReferenceModel", "make_norm", "noise_config", "norm_config", "resolve_lam"]

NORM_CHOICES = ("layer", "rms", "batch", "none", "ib-S", "ib-L", "ib-T")
LAYOUTS = ("vector", "sequence", "image")  # (N, C), (B, T, C), (N, C, H, W)

# Classes named in a saved config are imported only from these packages, so loading a
# checkpoint never imports arbitrary code.
_IMPORTABLE_PREFIXES = ("torch.nn.", "ibtools.norms.")


class MovedDimNorm(nn.Module):
    """Apply ``norm`` with dimension ``source`` moved to ``destination`` and back.

    Lets a per-feature norm (LayerNorm) act on the channels of an image ``(N, C, H, W)``
    (``source=1, destination=-1``) and a per-channel norm (BatchNorm1d) act on the features
    of a sequence ``(B, T, C)`` (``source=-1, destination=1``).  The wrapped module is
    ``.norm``, so :func:`ibtools.norms.swap_norms` and hooks see it as usual.
    """

    def __init__(self, norm: nn.Module, source: int, destination: int) -> None:
        super().__init__()
        self.norm = norm
        self.source, self.destination = source, destination

    def forward(self, x):
        return self.norm(x.movedim(self.source, self.destination)).movedim(self.destination, self.source)

    def extra_repr(self) -> str:
        return f"source={self.source}, destination={self.destination}"


class NoiseSource:
    """One seeded random stream per device, shared by the noise layers of one model.

    The first draw on a device seeds that device's generator with ``seed``, so a model
    built (or reloaded) with the same seed adds the same noise to the same inputs in the
    same order.  :meth:`reseed` starts every stream again.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._generators: dict = {}

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self._generators[key] = g
        return self._generators[key]

    def reseed(self, seed: int | None = None) -> None:
        """Restart the streams, from ``seed`` if given (else the seed they began with)."""
        if seed is not None:
            self.seed = int(seed)
        self._generators.clear()


class GaussianNoise(nn.Module):
    """``x + N(0, std^2)`` elementwise, in training and in evaluation alike.

    The noisy channel of Goldfeld et al. (2019): a block's output ``T = f(.) + Z`` is a
    random variable given the input, so ``I(X; T)`` is finite.  Unlike dropout the noise
    stays in ``eval()``: it is part of the model.  ``std = 0`` returns the input itself.
    Draws come from ``source`` (one stream per model, see :class:`NoiseSource`).
    """

    def __init__(self, std: float, source: NoiseSource) -> None:
        super().__init__()
        self.std = float(std)
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.std == 0.0:
            return x
        z = torch.randn(x.shape, generator=self.source.generator(x.device), device=x.device,
                        dtype=x.dtype)
        return x + self.std * z

    def extra_repr(self) -> str:
        return f"std={self.std:g}"


def noise_config(noise_std, noise_seed) -> dict:
    """Check a model's noise arguments; the config entries that rebuild them (none when
    ``noise_std`` is 0, so a noiseless model's config is what it was before noise existed)."""
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or \
            not math.isfinite(noise_std) or noise_std < 0:
        raise InputError(f"noise_std must be a finite number >= 0 (the standard deviation of the "
                         f"Gaussian noise added after every block; 0 for none), got {noise_std!r}")
    if isinstance(noise_seed, bool) or not isinstance(noise_seed, int):
        raise InputError(f"noise_seed must be an integer (it seeds the model's noise stream), "
                         f"got {noise_seed!r}")
    return {"noise_std": float(noise_std), "noise_seed": int(noise_seed)} if noise_std else {}


def _import_norm_class(path: str) -> type:
    if not path.startswith(_IMPORTABLE_PREFIXES):
        raise InputError(f"norm class {path!r} cannot be rebuilt from a config: only classes from "
                         f"{_IMPORTABLE_PREFIXES} are imported; pass the class itself instead")
    module_name, _, attr = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise InputError(f"norm class {path!r} not found: {err}") from None
    return cls


def _resolve(norm) -> str | type:
    if isinstance(norm, type) and issubclass(norm, nn.Module):
        return norm
    if isinstance(norm, str):
        if norm in NORM_CHOICES:
            return norm
        if "." in norm:
            return _import_norm_class(norm)
    raise InputError(f"norm must be one of {NORM_CHOICES} or a normalization class "
                     f"(e.g. ibtools.norms.IBBatchNorm1d), got {norm!r}")


def _is_ib(norm: str | type) -> bool:
    return (norm.startswith("ib-") if isinstance(norm, str) else issubclass(norm, IBNormMixin))


def norm_config(norm) -> str:
    """The JSON-able form of a ``norm`` argument: the string itself or ``module.Class``."""
    norm = _resolve(norm)
    return norm if isinstance(norm, str) else f"{norm.__module__}.{norm.__qualname__}"


def resolve_lam(norm, lam) -> float:
    """``lam`` for a model: default 1.0 with an IBNorm, 0.0 otherwise; >0 needs an IBNorm."""
    norm = _resolve(norm)
    if lam is None:
        return 1.0 if _is_ib(norm) else 0.0
    lam = IBF.check_lam(lam)
    if lam > 0 and not _is_ib(norm):
        raise InputError(f"lam={lam:g} only applies to IBNorm norms ('ib-S', 'ib-L', 'ib-T' or an "
                         f"IBNorm class), got norm={norm_config(norm)!r}; use lam=0 or None")
    return lam


def make_norm(norm, num_features: int, *, family: str, layout: str, lam: float = 0.0,
              order: str = "compress_first") -> nn.Module:
    """Build the normalization layer for ``num_features`` features or channels.

    Parameters
    ----------
    norm : str or type
        One of :data:`NORM_CHOICES`, an importable ``"module.Class"`` string from
        ``torch.nn``/``ibtools.norms``, or a class taking ``num_features`` first.
    family : {"layer", "rms", "batch"}
        The model's baseline family, used by ``"ib-*"``.
    layout : {"vector", "sequence", "image"}
        Shape of the activations: ``(N, C)``, ``(B, T, C)`` or ``(N, C, H, W)``.
    lam, order
        IBNorm settings (ignored by baselines).

    Returns
    -------
    torch.nn.Module
        The norm, wrapped in :class:`MovedDimNorm` when its statistics axis is not where the
        layout has its features.
    """
    if layout not in LAYOUTS:
        raise InputError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    norm = _resolve(norm)
    if norm == "none":
        return nn.Identity()
    ib = {"lam": lam, "order": order}
    if isinstance(norm, str):
        kind = family if norm.startswith("ib-") else norm
        if norm.startswith("ib-"):
            ib["variant"] = norm[3:]
        if kind == "layer":
            module = IBNorm(num_features, **ib) if _is_ib(norm) else nn.LayerNorm(num_features)
        elif kind == "rms":
            module = IBRMSNorm(num_features, **ib) if _is_ib(norm) else nn.RMSNorm(num_features)
        else:
            classes = (IBBatchNorm2d, nn.BatchNorm2d) if layout == "image" else (IBBatchNorm1d, nn.BatchNorm1d)
            module = classes[0](num_features, **ib) if _is_ib(norm) else classes[1](num_features)
    else:
        module = norm(num_features, **ib) if _is_ib(norm) else norm(num_features)
    per_channel = isinstance(module, nn.modules.batchnorm._BatchNorm)
    if layout == "image" and not per_channel:
        return MovedDimNorm(module, 1, -1)
    if layout == "sequence" and per_channel:
        return MovedDimNorm(module, -1, 1)
    return module


class ReferenceModel(nn.Module):
    """Base of the reference models: a ``config`` dict and cross-norm state-dict loading.

    Subclasses set ``name`` (the key in ``REFERENCE_MODELS``) and ``input_kind``
    (``"vector"``: digits ``(n, 64)``; ``"image"``: ``(n, 1, 8, 8)``; ``"tokens"``: byte
    ids ``(B, T)``) and store the keyword arguments that rebuild them in ``self.config``.
    A state dict saved with IBNorm layers loads into the same model built with baseline
    norms (the IBNorm-only entries are dropped) and vice versa.
    """

    name: str = ""
    input_kind: str = ""
    config: dict

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        # state_dict is load_state_dict's private copy, and children read from it after this.
        adapt_norm_state_dict(self, state_dict, prefix=prefix, inplace=True)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
