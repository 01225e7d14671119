"""Block shapes of KDE's fused kernel pass: taller blocks at large d, same numbers."""

import pytest
import torch

from ibtools.estimators import kde_kernel


def test_block_rows_grow_with_width_within_n_over_8():
    rows = kde_kernel._numba_rows
    assert rows(20000, 20) == rows(8000, 255) == kde_kernel._NUMBA_ROWS == 256
    assert rows(8000, 1024) == 1000          # n / 8: the diagonal blocks add b / n pairs
    assert rows(20000, 256) == rows(50000, 4096) == kde_kernel._NUMBA_WIDE_ROWS == 1024
    assert rows(1000, 1024) == 256           # never below the narrow blocks


def test_tall_blocks_give_the_same_sums(monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.setenv("IBTOOLS_KDE_ENGINE", "numba")
    n, d = 3072, 256
    t = torch.randn(n, d, generator=torch.Generator().manual_seed(3))
    t[::61] = t[1::61]  # some coinciding rows
    kl, bd, info = kde_kernel.pairwise_log_means(t, 20.0, 1 << 30)
    assert info["engine"] == "numba" and info["chunk_rows"] == n // 8
    # every pair of the triangle, and the diagonal blocks in full
    assert info["pairs"] == sum(min(384, n - r0) * (n - r0) for r0 in range(0, n, 384))
    monkeypatch.setattr(kde_kernel, "_numba_rows", lambda n_, d_: 256)
    kl_thin, bd_thin, thin = kde_kernel.pairwise_log_means(t, 20.0, 1 << 30)
    assert thin["chunk_rows"] == 256
    monkeypatch.setenv("IBTOOLS_KDE_ENGINE", "torch")
    kl_ref, bd_ref, ref = kde_kernel.pairwise_log_means(t, 20.0, 1 << 30)
    assert ref["engine"] == "torch"
    for got in (kl, kl_thin):
        torch.testing.assert_close(got, kl_ref, atol=2e-6, rtol=0)
    for got in (bd, bd_thin):
        torch.testing.assert_close(got, bd_ref, atol=2e-6, rtol=0)
    # the block shape only regroups float32 partial sums
    torch.testing.assert_close(kl, kl_thin, atol=1e-6, rtol=0)
