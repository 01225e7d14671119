"""Reference models: norm choices, config round trips, cross-norm loading, training, checkpoints."""

import json
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from ibtools.models import (
    MLP, REFERENCE_MODELS, MovedDimNorm, build_model, load_checkpoint_dict, save_checkpoint, train,
)
from ibtools.norms import IBBatchNorm1d, IBBatchNorm2d, IBNorm, IBRMSNorm, describe_norms

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tensors are tiny: one intra-op thread is faster, and far faster on a shared CPU.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TINY = {  # small sizes so each test runs in a fraction of a second
    "mlp": {"widths": [16, 12]},
    "cnn": {"channels": [4, 8]},
    "vit": {"dim": 16, "depth": 1, "heads": 2},
    "gpt": {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
    "llama": {"block_size": 16, "n_layer": 1, "n_head": 2, "dim": 16},
}


def _input(model, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    if model.input_kind == "tokens":
        return torch.randint(0, 256, (n // 2, 12), generator=g)
    x = torch.rand(n, 64, generator=g)
    return x.view(n, 1, 8, 8) if model.input_kind == "image" else x


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
@pytest.mark.parametrize("norm", ["layer", "rms", "batch", "none", "ib-S", "ib-L", "ib-T"])
def test_every_model_takes_every_norm_and_rebuilds_from_config(name, norm):
    torch.manual_seed(0)
    model = build_model(name, norm=norm, **TINY[name]).eval()
    x = _input(model)
    y = model(x)
    expected = (x.shape[0], x.shape[1], 256) if model.input_kind == "tokens" else (x.shape[0], 10)
    assert tuple(y.shape) == expected and bool(torch.isfinite(y).all())
    assert json.loads(json.dumps(model.config)) == model.config
    rebuilt = build_model(name, **model.config)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert_close(rebuilt.eval()(x), y, rtol=0, atol=0)
    info = describe_norms(model)
    if norm.startswith("ib-"):
        assert info == {"norm": norm, "lam": 1.0}
    else:
        assert info == {"norm": norm, "lam": None}


@pytest.mark.parametrize("name,flavour", [("mlp", IBNorm), ("cnn", IBBatchNorm2d), ("vit", IBNorm),
                                          ("gpt", IBNorm), ("llama", IBRMSNorm)])
def test_ib_norm_is_the_flavour_of_the_models_baseline(name, flavour):
    model = build_model(name, norm="ib-T", lam=0.5, **TINY[name])
    ib = [m for m in model.modules() if isinstance(m, (IBNorm, IBRMSNorm, IBBatchNorm2d, IBBatchNorm1d))]
    assert ib and all(type(m) is flavour and m.lam == 0.5 for m in ib)


@pytest.mark.parametrize("name,baseline", [("mlp", "layer"), ("cnn", "batch"), ("gpt", "layer"),
                                           ("llama", "rms")])
def test_baseline_checkpoint_loads_into_ib_model_and_back(name, baseline):
    torch.manual_seed(1)
    base = build_model(name, norm=baseline, **TINY[name])
    x = _input(base, seed=1)
    base.train()
    base(x)  # moves BatchNorm running statistics away from their initial values
    base.eval()
    ib = build_model(name, norm="ib-L", lam=0.0, **TINY[name])
    ib.load_state_dict(base.state_dict(), strict=True)
    assert_close(ib.eval()(x), base(x), rtol=0, atol=0)  # lam = 0: the baseline exactly

    ib.load_state_dict(build_model(name, norm="ib-L", lam=2.0, **TINY[name]).state_dict())
    assert describe_norms(ib)["lam"] == 2.0  # lam came from the state dict
    back = build_model(name, norm=baseline, **TINY[name])
    result = back.load_state_dict(ib.state_dict(), strict=True)  # IB-only entries dropped
    assert result.missing_keys == [] and result.unexpected_keys == []


def test_norm_layouts_and_norm_classes():
    vit = build_model("vit", norm="batch", **TINY["vit"])
    assert isinstance(vit.blocks[0].norm1, MovedDimNorm) and isinstance(vit.blocks[0].norm1.norm, nn.BatchNorm1d)
    cnn = build_model("cnn", norm="layer", **TINY["cnn"])
    assert isinstance(cnn.stem.norm.norm, nn.LayerNorm)
    # A per-pixel LayerNorm over channels standardizes each pixel's channel vector.
    h = cnn.stem.norm(torch.randn(2, 4, 3, 3) * 5 + 2)
    assert_close(h.mean(1), torch.zeros(2, 3, 3), rtol=0, atol=1e-5)

    mlp = MLP(widths=(8,), norm=IBBatchNorm1d, lam=0.5)
    assert mlp.config["norm"] == "ibtools.norms.modules.IBBatchNorm1d"
    assert isinstance(build_model("mlp", **mlp.config).layers[0].norm, IBBatchNorm1d)
    assert describe_norms(mlp) == {"norm": "ib-T", "lam": 0.5}


def test_bad_model_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="name must be one of.*'resnet'"):
        build_model("resnet")
    with pytest.raises(ValueError, match=r"lam=0.5 only applies to IBNorm.*'layer'"):
        build_model("mlp", norm="layer", lam=0.5)
    with pytest.raises(ValueError, match="norm must be one of.*'group'"):
        build_model("mlp", norm="group")
    with pytest.raises(ValueError, match="cannot be rebuilt from a config"):
        build_model("mlp", norm="os.path.join")
    with pytest.raises(TypeError, match="bad config for model 'gpt'.*n_layers"):
        build_model("gpt", n_layers=2)
    gpt = build_model("gpt", **TINY["gpt"])
    with pytest.raises(ValueError, match="sequence length 17 exceeds block_size 16"):
        gpt(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"idx must be an integer tensor of shape \(B, T\)"):
        gpt(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="language models need 'text'"):
        train("gpt", data="digits", max_steps=1)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive integer"):
        train("mlp", checkpoint_every=0)


def test_train_mlp_on_digits_writes_loadable_checkpoints(tmp_path):
    history = train("mlp", data="digits", epochs=3, seed=0, out_dir=tmp_path, checkpoint_every=20,
                    model_config={"widths": [32, 16], "norm": "ib-S", "lam": 0.5})
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[-1]["step"] == 3 * 22
    assert history[-1]["test_accuracy"] > 0.8  # chance is 0.1
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    names = sorted(p.name for p in tmp_path.glob("step_*.pt"))
    assert names == ["step_000000.pt", "step_000020.pt", "step_000040.pt", "step_000060.pt", "step_000066.pt"]
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave nothing behind

    first = torch.load(tmp_path / "step_000000.pt", weights_only=True)
    assert first["meta"]["test_accuracy"] < 0.3 and first["meta"]["train_loss"] is None
    ckpt = torch.load(tmp_path / "step_000066.pt", weights_only=True)
    assert ckpt["format"] == "ibtools-checkpoint" and ckpt["version"] == 1 and ckpt["arch"] == "ibtools:mlp"
    assert ckpt["config"] == history.model.config and ckpt["config"]["lam"] == 0.5
    meta = ckpt["meta"]
    assert (meta["norm"], meta["lam"], meta["seed"], meta["step"], meta["epoch"]) == ("ib-S", 0.5, 0, 66, 3.0)
    assert meta["test_accuracy"] == pytest.approx(history[-1]["test_accuracy"])
    model = load_checkpoint_dict(ckpt)
    x = torch.rand(5, 64)
    assert_close(model(x), history.model(x), rtol=0, atol=0)
    run = json.loads((tmp_path / "history.json").read_text())
    assert run["arch"] == "ibtools:mlp" and len(run["history"]) == 3


def test_training_is_seeded():
    a = train("mlp", max_steps=5, seed=3, model_config={"widths": [8]})
    b = train("mlp", max_steps=5, seed=3, model_config={"widths": [8]})
    c = train("mlp", max_steps=5, seed=4, model_config={"widths": [8]})
    assert a[-1]["train_loss"] == b[-1]["train_loss"] != c[-1]["train_loss"]


@pytest.mark.parametrize("name,epochs,config", [("cnn", 2, {"channels": [8, 16]}),
                                                 ("vit", 4, {"dim": 32, "depth": 1, "heads": 4})])
def test_vision_models_learn_digits(name, epochs, config):
    history = train(name, epochs=epochs, lr=5e-3, seed=0, model_config=config)
    assert history[0]["test_accuracy"] < history[-1]["test_accuracy"]
    assert history[-1]["test_accuracy"] > 0.6  # chance is 0.1; seed 0 gives 0.87 (cnn), 0.78 (vit)


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_language_models_learn_bytes(name, tmp_path):
    import inspect

    text = tmp_path / "corpus.txt"
    text.write_bytes(open(inspect.getsourcefile(inspect), "rb").read()[:40_000])
    history = train(name, data=f"text:{text}", epochs=1, max_steps=40, lr=5e-3, seed=0, out_dir=tmp_path,
                    model_config=TINY[name])
    start = torch.load(tmp_path / "step_000000.pt", weights_only=True)["meta"]["val_loss"]
    # With N(0, 0.02) weights the logits start near zero: loss ~ ln 256 nats per byte.
    assert start == pytest.approx(math.log(256), abs=0.05)
    assert history[-1]["val_loss"] < start - 1.5
    assert load_checkpoint_dict(torch.load(tmp_path / "step_000040.pt", weights_only=True)).name == name


def test_checkpoint_format_errors(tmp_path):
    model = build_model("mlp", **TINY["mlp"])
    with pytest.raises(TypeError, match=r"meta\['bad'\] must hold only"):
        save_checkpoint(model, tmp_path / "a.pt", name="mlp", meta={"bad": object()})
    with pytest.raises(ValueError, match="name='cnn' is CNN, but the model is MLP"):
        save_checkpoint(model, tmp_path / "a.pt", name="cnn")
    with pytest.raises(ValueError, match="not an ibtools checkpoint"):
        load_checkpoint_dict({"state_dict": {}})
    with pytest.raises(ValueError, match="arch must be 'ibtools:<name>'"):
        load_checkpoint_dict({"format": "ibtools-checkpoint", "version": 1, "arch": "timm:resnet"})
    path = save_checkpoint(model, tmp_path / "sub" / "m.pt", name="mlp", meta={"step": 7, "loss": float("nan")})
    obj = torch.load(path, weights_only=True)
    assert obj["meta"] == {"step": 7, "loss": None, "norm": "layer", "lam": None}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_on_cuda_and_load_on_cpu(tmp_path):
    import inspect

    text = tmp_path / "corpus.txt"
    text.write_bytes(open(inspect.getsourcefile(inspect), "rb").read()[:20_000])
    config = dict(TINY["llama"], norm="ib-T", lam=0.5)
    history = train("llama", data=f"text:{text}", max_steps=5, device="cuda", out_dir=tmp_path,
                    model_config=config)
    assert next(history.model.parameters()).device.type == "cuda"
    model = load_checkpoint_dict(torch.load(tmp_path / "step_000005.pt", weights_only=True))
    idx = torch.randint(0, 256, (2, 12))
    assert_close(model(idx), history.model(idx.cuda()).cpu(), rtol=1e-4, atol=1e-4)
    cnn = train("cnn", max_steps=3, device="cuda", model_config=dict(TINY["cnn"], norm="ib-S"))
    assert 0.0 <= cnn[-1]["test_accuracy"] <= 1.0 and cnn.model.layers[0].norm1.running_mean.is_cuda


# -- noisy networks (issue #17, train-time channel) ------------------------------------------


def test_noisy_mlp_adds_seeded_noise_in_training_and_evaluation():
    torch.manual_seed(0)
    model = build_model("mlp", widths=[16, 12], noise_std=0.3, noise_seed=5)
    assert model.config["noise_std"] == 0.3 and model.config["noise_seed"] == 5
    x = torch.rand(2000, 64, generator=torch.Generator().manual_seed(1))
    block = model.layers[0]
    with torch.no_grad():
        for mode in (model.train, model.eval):
            mode()
            clean = block.act(block.norm(block.linear(x)))
            noise = block(x) - clean  # the block's output is act(...) + Z
            assert abs(float(noise.std()) - 0.3) < 0.01 and abs(float(noise.mean())) < 0.01
    first, second = model(x), model(x)  # fresh noise on every pass, eval included
    assert not torch.equal(first, second)
    # the same seed replays the same stream; another seed does not
    twin = build_model("mlp", **model.config)
    twin.load_state_dict(model.state_dict())
    twin.eval()
    model.noise_source.reseed()
    assert_close(twin(x), model(x), rtol=0, atol=0)
    other = build_model("mlp", **dict(model.config, noise_seed=6))
    other.load_state_dict(model.state_dict())
    other.eval()
    assert not torch.equal(other(x), twin(x))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_zero_noise_is_the_noiseless_model_exactly(name):
    torch.manual_seed(3)
    plain = build_model(name, **TINY[name])
    torch.manual_seed(3)
    zero = build_model(name, **TINY[name], noise_std=0.0, noise_seed=9)
    assert zero.config == plain.config and "noise_std" not in zero.config
    assert [n for n, _ in zero.named_modules()] == [n for n, _ in plain.named_modules()]
    x = _input(plain, n=8)
    assert_close(zero(x), plain(x), rtol=0, atol=0)


def test_noisy_cnn_has_noise_after_stem_and_every_block():
    torch.manual_seed(0)
    model = build_model("cnn", **TINY["cnn"], noise_std=0.1, noise_seed=2).eval()
    names = [n for n, m in model.named_modules() if type(m).__name__ == "GaussianNoise"]
    assert names == ["stem.noise", "layers.0.noise", "layers.1.noise"]
    x = _input(model, n=8)
    assert not torch.equal(model(x), model(x))
    twin = build_model("cnn", **model.config)
    twin.load_state_dict(model.state_dict())
    model.noise_source.reseed()
    assert_close(twin.eval()(x), model(x), rtol=0, atol=0)


def test_noisy_mlp_checkpoint_reloads_with_its_noise(tmp_path):
    history = train("mlp", max_steps=3, seed=0, out_dir=tmp_path, checkpoint_every=3,
                    model_config={"widths": [8], "noise_std": 0.2, "noise_seed": 4})
    ckpt = torch.load(tmp_path / "step_000003.pt", weights_only=True)
    assert ckpt["config"]["noise_std"] == 0.2 and ckpt["config"]["noise_seed"] == 4
    model = load_checkpoint_dict(ckpt)
    model.eval()
    x = torch.rand(5, 64)
    trained = history.model.eval()
    trained.noise_source.reseed()
    assert_close(model(x), trained(x), rtol=0, atol=0)  # same weights, same noise stream
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("kwargs,match", [({"noise_std": -0.1}, "noise_std must be a finite"),
                                          ({"noise_std": float("nan")}, "noise_std must be"),
                                          ({"noise_std": 0.1, "noise_seed": 1.5},
                                           "noise_seed must be an integer")])
def test_noise_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model("mlp", **kwargs)
