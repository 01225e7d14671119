"""Fixtures shared by several test files."""

import pytest


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Two tiny MLPs (LayerNorm and IBNorm-T lam 2), a checkpoint before and after 8 steps,
    trained once per session; tests read them and never change them."""
    from ibtools.models import train

    root = tmp_path_factory.mktemp("runs")
    paths = []
    for norm, lam in (("layer", 0.0), ("ib-T", 2.0)):
        out = root / f"{norm}_{lam:g}"
        train("mlp", model_config={"norm": norm, "lam": lam, "widths": [16, 8]}, data="digits",
              max_steps=8, checkpoint_every=8, out_dir=out, seed=0)
        paths += sorted(str(p) for p in out.glob("*.pt"))
    assert len(paths) == 4
    return paths
