"""A plain-NumPy Kolchinsky-Tracey KDE, written the straightforward way (full pairwise
distance matrix, log-sum-exp per row), as Saxe et al. (2018) computed it.

It is the reference that ``ibtools.estimators.kde`` is checked and timed against: float64
throughout, no chunking unless ``block_rows`` asks for it (a full n x n float64 matrix needs
8 n^2 bytes, 3.2 GB at n = 20 000, and the log-sum-exp needs two more of the same size).
Not part of the library.

    H_KL = d/2 ln(2 pi e s2) - 1/n sum_i ln 1/n sum_j exp(-||t_i - t_j||^2 / (2 s2))  >= H(T+Z)
    H_BD = H_KL evaluated with kernel variance 4 s2, minus d/2 ln 4                   <= H(T+Z)
"""

from __future__ import annotations

import numpy as np


def pairwise_squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``||a_i - b_j||^2`` for all pairs, clamped at zero against rounding."""
    a2 = np.sum(a * a, axis=1)[:, None]
    b2 = np.sum(b * b, axis=1)[None, :]
    return np.maximum(a2 + b2 - 2.0 * (a @ b.T), 0.0)


def row_logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1, keepdims=True)
    return top[:, 0] + np.log(np.exp(z - top).sum(axis=1))


def noise_entropy(dim: int, noise_var: float) -> float:
    """Entropy of N(0, noise_var I_dim): d/2 ln(2 pi e s2)."""
    return 0.5 * dim * (np.log(2.0 * np.pi * noise_var) + 1.0)


def entropy_upper_kl(t, noise_var: float, block_rows: int | None = None) -> float:
    """KL (upper) bound on H(T + N(0, noise_var I)) of the equal-weight mixture on the rows."""
    t = np.asarray(t, dtype=np.float64).reshape(len(t), -1)
    n, d = t.shape
    step = n if block_rows is None else int(block_rows)
    log_means = np.empty(n)
    for r0 in range(0, n, step):
        dists = pairwise_squared_distances(t[r0:r0 + step], t)
        log_means[r0:r0 + step] = row_logsumexp(-dists / (2.0 * noise_var)) - np.log(n)
    return float(noise_entropy(d, noise_var) - log_means.mean())


def entropy_lower_bd(t, noise_var: float, block_rows: int | None = None) -> float:
    """Bhattacharyya (lower) bound: the KL form at 4 s2, shifted by d/2 ln(1/4)."""
    t = np.asarray(t, dtype=np.float64).reshape(len(t), -1)
    d = t.shape[1]
    return entropy_upper_kl(t, 4.0 * noise_var, block_rows) + 0.5 * d * np.log(0.25)


def mi_deterministic(t, noise_var: float, bound: str = "upper",
                     block_rows: int | None = None) -> float:
    """I(X; T+Z) = H(T+Z) - d/2 ln(2 pi e s2) for T a deterministic function of X."""
    t = np.asarray(t, dtype=np.float64).reshape(len(t), -1)
    h = (entropy_upper_kl if bound == "upper" else entropy_lower_bd)(t, noise_var, block_rows)
    return h - noise_entropy(t.shape[1], noise_var)


def mi_labels(t, labels, noise_var: float, bound: str = "upper") -> float:
    """I(T+Z; Y) = H(T+Z) - sum_y p(y) H(T+Z | Y=y) for discrete labels."""
    t = np.asarray(t, dtype=np.float64).reshape(len(t), -1)
    labels = np.asarray(labels)
    h = entropy_upper_kl if bound == "upper" else entropy_lower_bd
    cond = 0.0
    for value in np.unique(labels):
        rows = t[labels == value]
        cond += len(rows) / len(t) * h(rows, noise_var)
    return h(t, noise_var) - cond
