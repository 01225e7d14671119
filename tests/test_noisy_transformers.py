"""Noise after every block of the ViT, GPT and LLaMA reference models (#17 item 2)."""

import math

import pytest
import torch
from torch.testing import assert_close

import ibtools
from ibtools.models import build_model, load_checkpoint_dict, save_checkpoint
from ibtools.noisy import noise_paths, noisy_network_information

TINY = {
    "vit": ({"dim": 16, "depth": 2, "heads": 2}, "blocks"),
    "gpt": ({"block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16}, "blocks"),
    "llama": ({"block_size": 16, "n_layer": 2, "n_head": 2, "dim": 16}, "layers"),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _input(name, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    if name == "vit":
        return torch.rand(n, 1, 8, 8, generator=g)
    return torch.randint(0, 256, (n, 12), generator=g)


def _build(name, seed=1, **kw):
    torch.manual_seed(seed)
    return build_model(name, **TINY[name][0], **kw)


@pytest.mark.parametrize("name", sorted(TINY))
def test_zero_noise_builds_the_noiseless_model_bit_for_bit(name):
    plain = _build(name).eval()
    zero = _build(name, noise_std=0.0, noise_seed=7).eval()
    assert zero.config == plain.config and "noise_std" not in zero.config
    assert [n for n, _ in zero.named_modules()] == [n for n, _ in plain.named_modules()]
    x = _input(name)
    assert torch.equal(zero(x), plain(x))
    # noise modules hold no parameters and draw nothing at construction: a noisy build from
    # the same seed has the noiseless model's parameters, so old checkpoints load into it
    noisy = _build(name, noise_std=0.3, noise_seed=7)
    old, new = plain.state_dict(), noisy.state_dict()
    assert list(old) == list(new) and all(torch.equal(old[k], new[k]) for k in old)
    noisy.load_state_dict(old)


@pytest.mark.parametrize("name", sorted(TINY))
def test_noise_after_every_block_seeded_in_train_and_eval(name):
    blocks = TINY[name][1]
    model = _build(name, noise_std=0.2, noise_seed=5)
    assert model.config["noise_std"] == 0.2 and model.config["noise_seed"] == 5
    noise_names = [n for n, m in model.named_modules() if type(m).__name__ == "GaussianNoise"]
    assert noise_names == [f"{blocks}.0.noise", f"{blocks}.1.noise"]
    x = _input(name)
    clean = _build(name).eval()
    for mode in ("train", "eval"):
        getattr(model, mode)()
        clean.train(mode == "train")
        first = model(x)
        assert not torch.equal(first, clean(x))        # the noise is in the outputs
        assert not torch.equal(first, model(x))        # fresh noise on every pass
    # the block's output is the noiseless block's plus N(0, 0.2^2) at every element
    block = getattr(model.eval(), blocks)[0]
    if name == "vit":
        h = torch.randn(64, 17, 16, generator=torch.Generator().manual_seed(2))
        args = (h,)
    else:
        h = torch.randn(64, 12, 16, generator=torch.Generator().manual_seed(2))
        args = (h, model._rotary(12, h.device, h.dtype)) if name == "llama" else (h,)
    with torch.no_grad():
        z = block(*args) - getattr(clean, blocks)[0](*args)
    assert abs(float(z.std()) - 0.2) < 0.01 and abs(float(z.mean())) < 0.01
    # a rebuilt model with the same seed replays the stream; another seed does not
    twin = build_model(name, **model.config)
    twin.load_state_dict(model.state_dict())
    model.noise_source.reseed()
    assert torch.equal(twin.eval()(x), model(x))
    other = build_model(name, **dict(model.config, noise_seed=6))
    other.load_state_dict(model.state_dict())
    model.noise_source.reseed()
    assert not torch.equal(other.eval()(x), model(x))


@pytest.mark.parametrize("name", sorted(TINY))
def test_checkpoint_round_trip_keeps_the_noise(name, tmp_path):
    model = _build(name, noise_std=0.1, noise_seed=3).eval()
    path = tmp_path / f"{name}.pt"
    save_checkpoint(model, path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["config"]["noise_std"] == 0.1 and ckpt["config"]["noise_seed"] == 3
    loaded = load_checkpoint_dict(ckpt).eval()
    x = _input(name)
    model.noise_source.reseed()
    assert torch.equal(loaded(x), model(x))             # same weights, same noise stream
    assert not torch.equal(loaded(x), loaded(x))


def test_noise_paths_per_token_rows_of_a_language_model():
    model = _build("gpt", noise_std=0.3, noise_seed=1).eval()
    x = _input("gpt", n=3)
    per_input = noise_paths(model, x, ["blocks.1"], n_paths=2)["blocks.1"][0]
    per_token = noise_paths(model, x, ["blocks.1"], n_paths=2, per_token=True)["blocks.1"][0]
    assert per_input.shape == (3, 2, 12 * 16) and per_token.shape == (3 * 12, 2, 16)
    # the same forward passes (same seed), cut into rows differently
    assert_close(per_token.view(3, 12, 2, 16).transpose(1, 2).reshape(3, 2, -1), per_input,
                 rtol=0, atol=0)
    # the first noisy block's pre-noise output is deterministic given the input: its paths
    # coincide; the second block's differ (the first block's noise travels forward)
    first = noise_paths(model, x, ["blocks.0"], n_paths=2, per_token=True)["blocks.0"][0]
    assert torch.equal(first[:, 0], first[:, 1])
    assert not torch.equal(per_token[:, 0], per_token[:, 1])


@pytest.mark.parametrize("name", ["vit", "llama"])
def test_noisy_network_information_on_vit_and_llama(name):
    model = _build(name, noise_std=0.5, noise_seed=0).eval()
    blocks = TINY[name][1]
    x = _input(name, n=40)
    y = (torch.arange(40) % 4) if name == "vit" else torch.roll(x, -1, dims=1)
    info = noisy_network_information(model, x, y, [f"{blocks}.0", f"{blocks}.1"], n_paths=4,
                                     mc_tolerance=0.05)
    n_rows = 40 if name == "vit" else 40 * 12
    for layer in info.values():
        for r in (layer.i_xt, layer.i_ty, layer.i_prev_t):
            assert math.isfinite(r.value) and r.n == n_rows and r.details["mc_se"] <= 0.05
        assert -0.1 < layer.i_xt.value <= math.log(n_rows) + 0.1
    # given x the first block's output is one Gaussian: h(T|X) = h(Z) up to Monte Carlo error
    first = info[f"{blocks}.0"].details
    assert first["h_t_given_x"] == pytest.approx(first["h_noise"], abs=0.2)


def test_analysis_of_a_tiny_noisy_gpt_with_the_mixture_estimator():
    model = _build("gpt", noise_std=0.5, noise_seed=0).eval()
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 8, (12, 13), generator=g)          # a small alphabet: repeats
    x, y = ids[:, :-1], ids[:, 1:]
    table = ibtools.analyze([model], data=(x, y), estimators=["mixture:mc_tolerance=0.05"],
                            layers=["blocks.0", "blocks.1"], max_samples=100, progress=False)
    assert len(table) == 2 and set(table["mode"]) == {"trained-noise"}
    assert (table["noise_std"] == 0.5).all()
    for col in ("i_xt", "i_ty", "i_prev_t"):
        assert table[col].map(math.isfinite).all(), table[[col, "flag_text"]]
    assert (table["n_samples"] == 100).all()
    # the rows are per-token noise paths of the sampled rows: I(X;T) is at most ln n
    assert (table["i_xt"] <= math.log(100) + 0.2).all()
    # past the first noisy block h(T|X) > h(Z): the deterministic reading overstates I(X;T)
    second = table[table["layer"] == "blocks.1"].iloc[0]
    assert second["i_xt"] < second["i_prev_t"]


def test_noisy_network_information_refuses_bad_rows_and_labels():
    model = _build("gpt", noise_std=0.3).eval()
    x = _input("gpt", n=3)
    with pytest.raises(ValueError, match="rows must index the 36 rows"):
        noisy_network_information(model, x, torch.roll(x, -1, 1), ["blocks.0"],
                                  rows=torch.tensor([0, 36]))
    with pytest.raises(ValueError, match="y must hold one integer class label"):
        noisy_network_information(model, x, torch.zeros(3, 5, dtype=torch.long), ["blocks.0"])
