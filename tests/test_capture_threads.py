"""The capture's forward pass follows the machine's load like the estimators: fewer torch
threads while other processes keep the cores busy, the caller's count restored after, and
the same activations either way."""

import pytest
import torch

from ibtools.estimators import _jit
from ibtools.models import build_model
from ibtools.probes import capture_activations, load_dataset


@pytest.fixture
def two_threads(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.delenv("IBTOOLS_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


def _capture(model, data):
    seen = []
    hook = model.blocks[0].register_forward_hook(
        lambda *a: seen.append(torch.get_num_threads()))
    try:
        acts = capture_activations(model, data, layers="blocks", max_rows=300, seed=0)
    finally:
        hook.remove()
    return acts, seen


def test_capture_forward_uses_fewer_threads_when_busy_and_restores(two_threads, monkeypatch):
    torch.manual_seed(0)
    model = build_model("gpt", n_layer=2, n_head=2, n_embd=16, block_size=32)
    data = load_dataset("text", model=model)
    monkeypatch.setattr(_jit, "free_cores", lambda: 2)
    idle, seen_idle = _capture(model, data)
    monkeypatch.setattr(_jit, "free_cores", lambda: 1)  # another process holds a core
    busy, seen_busy = _capture(model, data)
    assert set(seen_idle) == {2} and set(seen_busy) == {1}
    assert torch.get_num_threads() == 2
    for name in idle.layers:
        assert torch.equal(idle[name], busy[name])
    monkeypatch.setenv("IBTOOLS_THREADS", "torch")  # the opt-out keeps the caller's count
    _, seen_fixed = _capture(model, data)
    assert set(seen_fixed) == {2}
