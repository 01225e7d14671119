"""Checkpoint loading: every format round-trips; untrusted pickles never run; bad files fail
clearly."""

import json
import os
import pickle
import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ibtools.probes import UnsafePickleError, load_model, pickle_globals


def small_net():
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))


def same_outputs(a, b):
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.fixture
def trained():
    torch.manual_seed(0)
    net = small_net()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))  # not the default init, so loading must matter
    return net.eval()


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_plain_state_dict_round_trip(tmp_path, trained, suffix):
    path = tmp_path / f"w{suffix}"
    torch.save(trained.state_dict(), path)
    model, info = load_model(path, arch=small_net)
    same_outputs(model, trained)
    assert info["format"] == "torch" and info["missing_keys"] == [] == info["unexpected_keys"]
    assert not model.training


def test_arch_string_with_keyword_arguments(tmp_path):
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    torch.save({"state_dict": lin.state_dict()}, tmp_path / "lin.pt")
    model, info = load_model(tmp_path / "lin.pt", arch="torch.nn:Linear", in_features=4,
                             out_features=3)
    torch.testing.assert_close(model.weight, lin.weight)
    assert info["arch"] == "torch.nn:Linear" and info["wrapper"] == ["state_dict"]


@pytest.mark.parametrize("wrap", ["state_dict", "model", "lightning", "module_prefix",
                                  "compiled"])
def test_wrappers_and_prefixes_are_unwrapped(tmp_path, trained, wrap):
    sd = trained.state_dict()
    obj = {
        "state_dict": {"state_dict": sd, "epoch": 3, "optimizer": {"lr": 0.1}},
        "model": {"model": sd, "ema": {k: v + 1 for k, v in sd.items()}},
        "lightning": {"state_dict": {f"model.{k}": v for k, v in sd.items()}},
        "module_prefix": {f"module.{k}": v for k, v in sd.items()},
        "compiled": {"model": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
    }[wrap]
    torch.save(obj, tmp_path / "c.pt")
    model, info = load_model(tmp_path / "c.pt", arch=small_net)
    same_outputs(model, trained)
    if wrap in ("module_prefix", "compiled"):
        assert "module." in info["stripped_prefixes"]
    if wrap == "lightning":
        assert info["stripped_prefixes"] == ["model."]


def test_state_key_picks_the_ema_weights(tmp_path, trained):
    sd = trained.state_dict()
    ema = {k: v * 0.5 for k, v in sd.items()}
    torch.save({"model": sd, "ema": ema}, tmp_path / "c.pt")
    model, info = load_model(tmp_path / "c.pt", arch=small_net, state_key="ema")
    torch.testing.assert_close(model[0].weight, sd["0.weight"] * 0.5)
    assert info["wrapper"] == ["ema"]
    with pytest.raises(ValueError, match="state_key='nope'"):
        load_model(tmp_path / "c.pt", arch=small_net, state_key="nope")


def test_mismatches_are_reported_not_ignored(tmp_path, trained):
    sd = trained.state_dict()
    sd["extra.weight"] = torch.zeros(2)
    del sd["3.bias"]
    sd["0.weight"] = torch.zeros(9, 4)  # wrong shape
    torch.save(sd, tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"1 missing.*3\.bias.*1 unexpected.*extra\.weight.*"
                                         r"1 with other shapes.*strict=False"):
        load_model(tmp_path / "c.pt", arch=small_net)
    with pytest.warns(UserWarning, match="missing"):
        model, info = load_model(tmp_path / "c.pt", arch=small_net, strict=False)
    assert info["missing_keys"] == ["3.bias"] and info["unexpected_keys"] == ["extra.weight"]
    assert info["mismatched_keys"] == [("0.weight", [9, 4], [8, 4])]
    torch.testing.assert_close(model[3].weight, trained[3].weight)  # matching keys loaded


def test_safetensors_round_trip_with_and_without_ibtools_metadata(tmp_path, trained):
    sd = {k: v.contiguous() for k, v in trained.state_dict().items()}
    save_file(sd, str(tmp_path / "plain.safetensors"))
    model, info = load_model(tmp_path / "plain.safetensors", arch=small_net)
    same_outputs(model, trained)
    assert info["format"] == "safetensors"
    lin = nn.Linear(4, 3)
    meta = {"format": "ibtools-checkpoint", "arch": "torch.nn:Linear",
            "config": json.dumps({"in_features": 4, "out_features": 3}),
            "meta": json.dumps({"norm": "ib-S", "lam": 0.5, "step": 100})}
    save_file(lin.state_dict(), str(tmp_path / "lin.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="trust_code=True"):  # a file may not name code
        load_model(tmp_path / "lin.safetensors")
    model, info = load_model(tmp_path / "lin.safetensors", trust_code=True)  # arch from the file
    torch.testing.assert_close(model.weight, lin.weight)
    assert (info["lam"], info["norm"], info["step"]) == (0.5, "ib-S", 100)


def test_ibtools_checkpoint_dict_carries_arch_config_and_lam(tmp_path):
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    obj = {"format": "ibtools-checkpoint", "version": 1, "arch": "torch.nn:Linear",
           "config": {"in_features": 4, "out_features": 3}, "state_dict": lin.state_dict(),
           "meta": {"norm": "ib-T", "lam": 0.25, "seed": 7, "step": 50}}
    torch.save(obj, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="torch.nn:Linear"):  # a file may not name code
        load_model(tmp_path / "c.pt")
    model, info = load_model(tmp_path / "c.pt", arch="torch.nn:Linear")  # the user names it
    torch.testing.assert_close(model.weight, lin.weight)
    assert info["format"] == "ibtools" and info["config"] == obj["config"]
    assert (info["norm"], info["lam"], info["seed"], info["step"]) == ("ib-T", 0.25, 7, 50)


@pytest.mark.parametrize("name", ["mlp", "gpt"])
def test_reference_model_checkpoint_round_trip(tmp_path, name):
    from ibtools.models import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model(name, norm="ib-S", lam=0.3).eval()
    path = save_checkpoint(model, tmp_path / f"{name}.pt", meta={"seed": 3, "step": 10})
    back, info = load_model(path)
    x = torch.rand(4, 64) if name == "mlp" else torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x))
    assert info["arch"] == f"ibtools:{name}" and info["lam"] == pytest.approx(0.3)
    assert info["seed"] == 3 and info["step"] == 10
    fresh, info = load_model(f"ibtools:{name}")  # a name alone: an untrained model
    assert type(fresh) is type(model) and info["format"] == "none"


# ----------------------------------------------------------------------------- pickles


class _Payload:
    """Unpickling this calls os.mkdir(marker): evidence that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, writer):
    marker = str(tmp_path / "payload_ran")
    path = tmp_path / "evil.pt"
    obj = {"0.weight": torch.zeros(8, 4), "boom": _Payload(marker)}
    if writer == "torch":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    with pytest.raises(UnsafePickleError, match=r"trust_pickle=True.*") as err:
        load_model(path, arch=small_net)
    assert "posix.mkdir" in str(err.value) or "os.mkdir" in str(err.value)
    assert not os.path.exists(marker)
    assert any(g.endswith("mkdir") for g in pickle_globals(path))


def test_full_pickled_module_needs_the_trust_flag(tmp_path, trained):
    torch.save(trained, tmp_path / "full.pt")
    with pytest.raises(UnsafePickleError, match="trust_pickle=True") as err:
        load_model(tmp_path / "full.pt")
    assert "torch.nn.modules" in str(err.value)  # the globals it wanted are named
    model, info = load_model(tmp_path / "full.pt", trust_pickle=True)
    same_outputs(model, trained)
    assert info["format"] == "module"


# ----------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "truncated_safetensors"])
def test_corrupt_or_truncated_files_give_a_clear_error(tmp_path, trained, damage):
    good = tmp_path / ("g.safetensors" if "safetensors" in damage else "g.pt")
    if "safetensors" in damage:
        save_file(dict(trained.state_dict()), str(good))
    else:
        torch.save(trained.state_dict(), good)
    raw = good.read_bytes()
    bad = tmp_path / ("bad" + good.suffix)
    bad.write_bytes({"garbage": b"this is not a checkpoint at all", "empty": b""}.get(
        damage, raw[: len(raw) // 2]))
    with pytest.raises(ValueError, match=r"truncated|corrupt"):
        load_model(bad, arch=small_net)


def test_missing_arch_and_bad_arch_are_explained(tmp_path, trained):
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match="arch="):
        load_model(tmp_path / "w.pt")
    with pytest.raises(ValueError, match="is not accepted"):
        load_model(tmp_path / "w.pt", arch="nonsense")
    with pytest.raises(ValueError, match="has no attribute"):
        load_model(tmp_path / "w.pt", arch="torch.nn:NoSuchLayer")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_model(tmp_path / "absent.pt", arch=small_net)


# ----------------------------------------------------------------------------- Hugging Face


def test_hugging_face_directory_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    ids = torch.randint(0, 50, (2, 8))
    for ckpt, arch in ((tmp_path / "hf", None), (None, f"hf:{tmp_path / 'hf'}")):
        model, info = load_model(ckpt, arch=arch)
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, hf(ids).logits)
        assert info["format"] == "huggingface" and info["missing_keys"] == []


def test_hugging_face_directory_without_transformers_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"ibtools\[hf\]"):
        load_model(tmp_path / "hf")
