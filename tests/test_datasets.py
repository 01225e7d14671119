"""Analysis data sources: digits, text, npz and user functions."""

import textwrap

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from ibtools.probes import AnalysisData, BatchStream, capture_activations, load_dataset


def test_digits_uses_the_shared_split_scaled_to_unit_interval():
    d = load_digits()
    _, x_te, _, y_te = train_test_split(d.data, d.target, test_size=0.25, random_state=0,
                                        stratify=d.target)
    data = load_dataset("digits")
    assert data.kind == "classification" and data.inputs.shape == (450, 64)
    np.testing.assert_allclose(data.inputs.numpy(), x_te / 16.0, rtol=0, atol=1e-7)
    assert data.targets.tolist() == y_te.tolist()
    assert 0.0 <= float(data.inputs.min()) and float(data.inputs.max()) <= 1.0
    assert load_dataset("digits", split="train").n_samples == 1347
    assert load_dataset("digits", split="all").n_samples == 1797


def test_digits_matches_the_reference_models_training_split():
    from ibtools.models import load_digits_split

    ref = load_digits_split()
    data = load_dataset("digits", split="test")
    assert torch.equal(data.inputs, ref.x_test) and torch.equal(data.targets, ref.y_test)


def test_digits_subset_is_seeded_and_shaped_for_the_model():
    a = load_dataset("digits", max_samples=50, seed=1)
    b = load_dataset("digits", max_samples=50, seed=1)
    c = load_dataset("digits", max_samples=50, seed=2)
    assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, c.inputs)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 10))
    assert load_dataset("digits", model=conv).inputs.shape == (450, 1, 8, 8)
    mlp = nn.Sequential(nn.Linear(64, 10))
    assert load_dataset("digits", model=mlp).inputs.shape == (450, 64)


@pytest.mark.parametrize("name, shape", [("mlp", (450, 64)), ("cnn", (450, 1, 8, 8)),
                                         ("vit", (450, 1, 8, 8))])
def test_digits_for_reference_models(name, shape):
    from ibtools.models import build_model

    model = build_model(name)
    data = load_dataset("digits", model=model)
    assert tuple(data.inputs.shape) == shape
    with torch.no_grad():
        assert model.eval()(data.inputs[:3]).shape == (3, 10)


def test_text_bytes_give_next_token_windows(tmp_path):
    text = ("the quick brown fox jumps over the lazy dog. " * 30).encode()
    path = tmp_path / "t.txt"
    path.write_bytes(text)
    data = load_dataset(f"text:{path}", split="all", seq_len=16)
    assert data.kind == "language" and data.inputs.shape == ((len(text) - 1) // 16, 16)
    assert torch.equal(data.inputs[:, 1:], data.targets[:, :-1])  # shifted by one
    s = data.meta["window_starts"][3]
    assert bytes(data.inputs[3].tolist()) == text[s:s + 16]
    assert int(data.targets[3, -1]) == text[s + 16]
    cut = int(len(text) * 0.9)
    test = load_dataset(f"text:{path}", split="test", seq_len=16)
    assert test.n_samples == (len(text) - cut - 1) // 16
    assert bytes(test.inputs[0].tolist()) == text[cut:cut + 16]
    few = load_dataset(f"text:{path}", split="all", seq_len=16, max_samples=5, seed=0)
    assert few.n_samples == 5 and set(few.meta["window_starts"]) <= set(data.meta["window_starts"])


def test_text_through_a_tokenizer_and_model_context(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcabcabc" * 20)
    data = load_dataset(f"text:{path}", seq_len=4, split="all",
                        tokenizer=lambda s: [ord(c) - ord("a") for c in s])
    assert data.inputs[0].tolist() == [0, 1, 2, 0] and data.meta["tokenizer"] == "function"

    class WithContext(nn.Module):
        config = {"block_size": 8}

    assert load_dataset(f"text:{path}", model=WithContext(), split="all").meta["seq_len"] == 8
    with pytest.raises(ValueError, match="seq_len=9 exceeds the model's context length 8"):
        load_dataset(f"text:{path}", model=WithContext(), seq_len=9)
    with pytest.raises(ValueError, match="fewer than seq_len"):
        load_dataset(f"text:{path}", seq_len=500)


def test_text_default_corpus_matches_reference_training():
    from ibtools.models import load_text
    from ibtools.models.data import default_text_path

    data = load_dataset("text", split="test", seq_len=32, max_samples=3)
    val = load_text(default_text_path()).val
    s = data.meta["window_starts"][0]
    assert torch.equal(data.inputs[0], val[s:s + 32])


def test_npz_arrays_and_split_keys(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 5)), rng.integers(0, 3, 30)
    np.savez(tmp_path / "a.npz", X=x, Y=y)
    data = load_dataset(f"npz:{tmp_path / 'a.npz'}")
    assert data.kind == "classification" and data.inputs.dtype == torch.float32
    np.testing.assert_allclose(data.inputs.numpy(), x, rtol=1e-6)
    np.savez(tmp_path / "b.npz", X_train=x[:20], Y_train=y[:20], X_test=x[20:], Y_test=y[20:])
    assert load_dataset(f"npz:{tmp_path / 'b.npz'}", split="test").n_samples == 10
    np.savez(tmp_path / "c.npz", features=x)
    with pytest.raises(ValueError, match=r"holds \['features'\].*'X' and 'Y'"):
        load_dataset(f"npz:{tmp_path / 'c.npz'}")
    (tmp_path / "d.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")


def test_function_spec_returning_batches(tmp_path, monkeypatch):
    (tmp_path / "my_batches.py").write_text(textwrap.dedent("""
        import torch
        CALLS = []
        def make(split, seq_len=6):
            CALLS.append(split)
            g = torch.Generator().manual_seed(0)
            for _ in range(3):
                ids = torch.randint(0, 256, (4, seq_len + 1), generator=g)
                yield ids[:, :-1], ids[:, 1:]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_dataset("my_batches:make", split="train")
    assert isinstance(data, BatchStream) and data.kind == "language"
    model = nn.Sequential(nn.Embedding(256, 8), nn.LayerNorm(8))
    a = capture_activations(model, data, layers="1")
    b = capture_activations(model, data, layers="1")  # the generator is made anew
    assert len(a) == 3 * 4 * 6 and torch.equal(a["1"], b["1"])
    import my_batches

    assert set(my_batches.CALLS) == {"train"}


def test_tuples_and_iterables_are_accepted_by_capture():
    x = torch.randn(10, 3)
    y = torch.arange(10) % 2
    model = nn.Sequential(nn.Linear(3, 2))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    from_loader = capture_activations(model, loader, layers="0")
    from_tuple = capture_activations(model, AnalysisData(x, y), layers="0")
    one_shot = capture_activations(model, iter([(x[:5], y[:5]), (x[5:], y[5:])]), layers="0")
    torch.testing.assert_close(from_loader["0"], from_tuple["0"])
    torch.testing.assert_close(one_shot["0"], from_tuple["0"])
    assert torch.equal(one_shot.y, y)


def test_bad_specs_name_the_accepted_forms(tmp_path):
    with pytest.raises(ValueError, match="'digits', 'text:PATH'"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="split='dev'"):
        load_dataset("digits", split="dev")
    with pytest.raises(ValueError, match="max_samples=0"):
        load_dataset("digits", max_samples=0)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_dataset(f"text:{tmp_path / 'missing.txt'}")
    with pytest.raises(ValueError, match="cannot import"):
        load_dataset("no_such_module_xyz:make")
