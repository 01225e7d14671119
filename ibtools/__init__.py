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

__all__ = ["METHODS", "EstimateResult", "entropy", "get_estimator", "mutual_information",
           "__version__"]
