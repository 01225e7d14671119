"""ibtools: information-theoretic analysis of PyTorch models.

Estimate mutual information and entropy (binning, KDE, KSG, matrix-Renyi, Gaussian and the
neural bounds), capture activations from checkpoints, compute information-bottleneck values
per layer, and write reports.  All values are in nats unless a report says bits.
"""

from ibtools.estimators import (
    METHODS,
    EstimateResult,
    entropy,
    get_estimator,
    mutual_information,
)

__version__ = "0.1.0"


def analyze(*args, **kwargs):
    """Checkpoints -> results table; see :func:`ibtools.analysis.analyze`."""
    from ibtools.analysis import analyze as _analyze

    return _analyze(*args, **kwargs)


_LAZY = {"capture_activations": "ibtools.probes", "Activations": "ibtools.probes",
         "load_model": "ibtools.probes", "load_dataset": "ibtools.probes",
         "swap_norms": "ibtools.norms", "describe_norms": "ibtools.norms",
         "IBNorm": "ibtools.norms", "build_model": "ibtools.models", "train": "ibtools.models",
         "write_report": "ibtools.reports", "load_results": "ibtools.results",
         "merge_runs": "ibtools.merge", "save_model": "ibtools.saving",
         "load_saved_model": "ibtools.saving",
         "track": "ibtools.tracking", "Tracker": "ibtools.tracking"}


def __getattr__(name):
    # subpackages load on first use so `import ibtools` stays light
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in ("estimators", "norms", "models", "probes", "reports", "analysis", "results",
                "tracking", "integrations"):
        return importlib.import_module(f"ibtools.{name}")
    raise AttributeError(f"module 'ibtools' has no attribute {name!r}")

__all__ = ["METHODS", "EstimateResult", "analyze", "entropy", "get_estimator",
           "mutual_information", "__version__", *_LAZY]
