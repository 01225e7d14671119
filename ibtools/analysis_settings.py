"""The settings of one analysis run, checked once and carried as one object.

:func:`ibtools.analyze` builds an :class:`AnalysisSettings` from its keyword arguments
(:meth:`AnalysisSettings.from_arguments`, which names a bad argument, its value and what is
accepted); the serial loop, :func:`ibtools.layer_rows.layer_rows`, the Dask tasks and the
tracker read their settings from it.  The data and the device travel beside it: the data
may be large, and the device is resolved where the work runs.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from ibtools.errors import InputError, InputTypeError

DEFAULT_ESTIMATORS = ("binning:n_bins=30", "kde:noise_var=0.1", "ksg:k=3,transform='copula'")
REFERENCES = ("input", "previous")
#: Noise paths per input for a network trained with noise (:mod:`ibtools.noisy`).
DEFAULT_NOISE_PATHS = 8


def _as_list(value, name):
    if value is None:
        return None
    if isinstance(value, (str, Path, int, float)):  # one value stands for a list of one
        return [value]
    try:
        return list(value)
    except TypeError:
        raise InputTypeError(f"{name} must be a value or a list of values; got {value!r}") from None


def _check_betas(betas):
    betas = _as_list(betas, "betas") or [0.1]
    out = []
    for b in betas:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b < 0:
            raise InputError(f"betas: {b!r} is not accepted; each beta must be a finite "
                             f"number >= 0")
        out.append(float(b))
    return out


def _check_int(value, name, minimum, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name}={value!r} is not accepted; {what}")
    return value


def check_threads(threads):
    """``"auto"``, ``None`` or an int >= 1, else an error naming the value."""
    if threads not in ("auto", None):
        _check_int(threads, "threads", 1, "use 'auto', None or an int >= 1")
    return threads


def capture_options(memory_budget, spill_dir, batch_size, reduce=None) -> dict:
    """The capture's memory controls and reduction, checked before any model is loaded."""
    from ibtools import inputs as inputs_io
    from ibtools.estimators.base import parse_bytes
    from ibtools.probes.reduce import parse_reduce
    from ibtools.probes.storage import check_spill_dir

    if memory_budget not in (None, "auto"):
        parse_bytes(memory_budget, "memory_budget")
    check_spill_dir(spill_dir)
    _check_int(batch_size, "batch_size", 1, "use an int >= 1")
    options = {"memory_budget": inputs_io.capture_budget(memory_budget),
               "spill_dir": spill_dir, "batch_size": batch_size, "keep_spill": False}
    if reduce is not None:
        options["reduce"] = parse_reduce(reduce)
    return options


@dataclasses.dataclass(frozen=True)
class AnalysisSettings:
    """What one run measures and how; see :func:`ibtools.analyze` for each field's meaning.

    ``specs`` are the parsed estimator settings (an analysis-time ``noise_std`` sweep already
    expanded), ``data_name`` the data as config.json records it, ``threads`` the user's
    value (``"auto"`` is applied where the work runs, to that device), ``noise_paths`` the
    noise paths per input of a network trained with noise.
    """

    specs: tuple
    betas: tuple = (0.1,)
    reference: str = "input"
    max_samples: int = 2000
    seed: int = 0
    pool: str | None = None
    ci: str | None = None
    split: str = "test"
    arch: str | None = None
    data_name: str = ""
    layers: object = None
    arch_kwargs: dict | None = None
    trust_pickle: bool = False
    trust_code: bool = False
    strict: bool = True
    capture_options: dict = dataclasses.field(default_factory=dict)
    threads: object = "auto"
    noise_paths: int = DEFAULT_NOISE_PATHS

    @classmethod
    def from_arguments(cls, *, estimators=None, betas=(0.1,), reference="input",
                       max_samples=2000, seed=0, pool=None, ci=None, split="test", arch=None,
                       data="digits", layers=None, arch_kwargs=None, trust_pickle=False,
                       trust_code=False, strict=True, threads="auto", noise_std=None,
                       noise_paths=DEFAULT_NOISE_PATHS, memory_budget="auto", spill_dir=None,
                       batch_size=64, reduce=None, noise_scale="absolute") -> AnalysisSettings:
        """The settings of :func:`ibtools.analyze`'s keyword arguments, each checked."""
        from ibtools import inputs as inputs_io
        from ibtools import noise_channel
        from ibtools.estimators.spec import parse_estimator_specs

        # one spec ("binning", a dict) is one setting, never a sequence of letters or keys
        specs = parse_estimator_specs(estimators if estimators is not None
                                      else list(DEFAULT_ESTIMATORS))
        if not specs:
            raise InputError("estimators is empty; give at least one estimator spec")
        specs = noise_channel.expand_specs(specs, noise_channel.check_noise_std(noise_std),
                                           noise_channel.check_noise_scale(noise_scale))
        betas = _check_betas(betas)
        if reference not in REFERENCES:
            raise InputError(f"reference={reference!r} is not accepted; use one of "
                             f"{list(REFERENCES)}")
        if pool not in (None, "mean", "last"):
            raise InputError(f"pool={pool!r} is not accepted; use None, 'mean' or 'last'")
        if ci not in (None, "auto"):
            raise InputError(f"ci={ci!r} is not accepted; use None or 'auto'")
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 10:
            raise InputError(f"max_samples={max_samples!r} must be an integer >= 10")
        _check_int(noise_paths, "noise_paths", 2,
                   "use an int >= 2 (noise paths per input of a network trained with noise)")
        return cls(specs=tuple(specs), betas=tuple(betas), reference=reference,
                   max_samples=max_samples, seed=seed, pool=pool, ci=ci, split=split, arch=arch,
                   data_name=inputs_io.describe_data(data), layers=layers,
                   arch_kwargs=arch_kwargs, trust_pickle=trust_pickle, trust_code=trust_code,
                   strict=strict, threads=check_threads(threads), noise_paths=noise_paths,
                   capture_options=capture_options(memory_budget, spill_dir, batch_size, reduce))

    def threads_on(self, device) -> int | None:
        """torch's thread count for work on ``device``: ``"auto"`` is 1 on a CPU for problems
        of at most 4096 rows (thread synchronisation costs more than it saves there)."""
        if self.threads == "auto":
            return 1 if str(device) == "cpu" and self.max_samples <= 4096 else None
        return self.threads

    def record(self) -> dict:
        """The settings as config.json records them (and a resume compares them)."""
        from ibtools import noise_channel
        from ibtools.probes.reduce import describe as describe_reduce

        return {"arch": self.arch, "data": self.data_name, "layers": self.layers,
                "estimators": [s.spec_string for s in self.specs], "reference": self.reference,
                "max_samples": self.max_samples, "seed": self.seed, "pool": self.pool,
                "ci": self.ci, "split": self.split,
                "noise_std": noise_channel.sweep_of(self.specs),
                "reduce": describe_reduce(self.capture_options.get("reduce")),
                "noise_paths": self.noise_paths}
