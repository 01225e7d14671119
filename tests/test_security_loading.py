"""Loading a file never runs code the user did not name.

Every hostile file kind goes through the API (``load_model``, ``ibtools.analyze``) and the
CLI (``ibtools analyze FILE``); each payload would create a marker file if it ran, and each
test asserts that the marker is absent and that the CLI exits 2 naming the string and the
opt-ins.  The opt-ins themselves (``trust_code``, an explicit ``arch``) still load a
legitimate external factory.
"""

import json
import os
import pickle
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

import ibtools
from ibtools.cli import main
from ibtools.models import REFERENCE_MODELS, build_model, load_checkpoint_dict, save_checkpoint
from ibtools.models.checkpoint_format import estimate_parameters
from ibtools.probes import UnsafePickleError, load_model

STDLIB_ARCHS = ["os:system", "builtins:exec", "subprocess:call"]


def _payload_config(arch, marker):
    """Keyword arguments with which ``arch`` would create ``marker`` if it were called."""
    return {"os:system": {"command": f"touch {marker}"},
            "builtins:exec": {"source": f"open({str(marker)!r}, 'w').close()"},
            "subprocess:call": {"args": ["touch", str(marker)]}}[arch]


def _ibtools_pt(path, arch, config, state_dict=None):
    torch.save({"format": "ibtools-checkpoint", "version": 1, "arch": arch, "config": config,
                "state_dict": state_dict or {"w": torch.zeros(2)}, "meta": {}}, path)
    return path


def _ibtools_safetensors(path, arch, config, state_dict=None):
    save_file(state_dict or {"w": torch.zeros(2)}, str(path),
              metadata={"format": "ibtools-checkpoint", "arch": arch,
                        "config": json.dumps(config), "meta": "{}"})
    return path


def _cli(path, tmp_path, *extra):
    return CliRunner().invoke(main, ["analyze", str(path), "--out", str(tmp_path / "out"),
                                     "--no-report", "--device", "cpu", *extra])


def _api_calls(path):
    """load_model and ibtools.analyze on one file, as two zero-argument calls."""
    return [lambda: load_model(path),
            lambda: ibtools.analyze(path, estimators=["binning:n_bins=5"], max_samples=50,
                                    device="cpu", progress=False)]


# ----------------------------------------------------------------------------- pickles


class _SystemPayload:
    """Unpickling this calls os.system: evidence that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch", "pickle", "protocol-0 INST"])
def test_pickle_payload_never_runs(tmp_path, writer):
    """The refusal names the global the payload wanted, also for the protocol-0 INST opcode
    (which was reported as '(unknown)')."""
    marker, path = tmp_path / "PWNED", tmp_path / "evil.pt"
    obj = {"0.weight": torch.zeros(2, 2), "boom": _SystemPayload(marker)}
    if writer == "torch":
        torch.save(obj, path)
    elif writer == "pickle":
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    else:  # MARK, the command, INST os system: calls os.system(command)
        path.write_bytes(b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n.")
    for call in _api_calls(path):
        with pytest.raises(UnsafePickleError, match=r"(posix|os)\.system.*trust_pickle=True"):
            call()
    res = _cli(path, tmp_path)
    assert res.exit_code == 2, res.output
    assert "system" in res.output and "--trust-pickle" in res.output
    assert not marker.exists()


# ----------------------------------------------------------------------------- stored arch


@pytest.mark.parametrize("kind", ["pt", "safetensors"])
@pytest.mark.parametrize("arch", STDLIB_ARCHS)
def test_stored_arch_naming_a_stdlib_callable_is_refused(tmp_path, kind, arch):
    marker = tmp_path / "PWNED"
    writer = _ibtools_pt if kind == "pt" else _ibtools_safetensors
    path = writer(tmp_path / f"evil.{kind}", arch, _payload_config(arch, marker))
    for call in _api_calls(path):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert repr(arch) in message and "trust_code=True" in message
        assert f"arch={arch!r}" in message and "nothing" in message.lower()
    res = _cli(path, tmp_path)
    assert res.exit_code == 2, res.output
    assert arch in res.output and "--trust-code" in res.output and "--arch" in res.output
    assert not marker.exists()
    assert not (tmp_path / "out" / "results.csv").exists()


def test_stored_arch_is_refused_before_any_import(tmp_path, monkeypatch):
    """A module named by a file is not even imported (its top level would run)."""
    marker = tmp_path / "IMPORTED"
    (tmp_path / "sneaky_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                            f"def make():\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _ibtools_pt(tmp_path / "c.pt", "sneaky_mod:make", {})
    with pytest.raises(ValueError, match="sneaky_mod:make"):
        load_model(path)
    assert not marker.exists() and "sneaky_mod" not in sys.modules


def test_config_file_cannot_name_code(tmp_path):
    """An arch or data function read from --config is refused like one from a checkpoint."""
    marker = tmp_path / "PWNED"
    ckpt = save_checkpoint(build_model("mlp", widths=[8]), tmp_path / "m.pt")
    for key, value in (("arch", "os:system"), ("data", "os:system")):
        conf = tmp_path / f"{key}.json"
        conf.write_text(json.dumps({key: value}))
        res = _cli(ckpt, tmp_path, "--config", str(conf))
        assert res.exit_code == 2, res.output
        assert "os:system" in res.output and "--trust-code" in res.output
    assert not marker.exists()


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("kind", ["pt", "safetensors"])
@pytest.mark.parametrize("arch, config, named", [
    ("ibtools:mlp", {"widths": [10**6, 10**6]}, "widths=[1000000, 1000000]"),
    ("ibtools:gpt", {"n_embd": 10**5}, "n_embd=100000"),
    ("ibtools:llama", {"vocab_size": 10**9}, "vocab_size=1000000000"),
])
def test_absurd_sizes_are_refused_before_allocation(tmp_path, kind, arch, config, named):
    writer = _ibtools_pt if kind == "pt" else _ibtools_safetensors
    path = writer(tmp_path / f"big.{kind}", arch, config)
    for call in _api_calls(path):
        with pytest.raises(ValueError, match="budget") as err:
            call()
        assert named in str(err.value) and "Nothing was allocated" in str(err.value)
    res = _cli(path, tmp_path)
    assert res.exit_code == 2, res.output
    assert named in res.output


@pytest.mark.parametrize("arch, config, named, match", [
    ("ibtools:gpt", {"n_layer": 10**6, "n_embd": 4, "n_head": 1}, "n_layer=1000000", "blocks"),
    ("ibtools:mlp", {"widths": [1] * 20_000}, "widths=[1, 1, 1", "blocks"),
    ("ibtools:vit", {"mlp_ratio": float("inf")}, "mlp_ratio=inf", "budget"),
])
def test_absurd_depth_or_infinite_sizes_are_refused(tmp_path, arch, config, named, match):
    path = _ibtools_pt(tmp_path / "deep.pt", arch, config)
    with pytest.raises(ValueError, match=match) as err:
        load_model(path)
    assert named in str(err.value) and "Nothing was" in str(err.value)


@pytest.mark.parametrize("config, named", [
    ({"widths": [8], "evil": 1}, "['evil']"),
    ({"in_features": "64"}, "in_features='64'"),
    ({"widths": "8,8"}, "widths='8,8'"),
    ({"widths": [8.5]}, "widths=[8.5]"),
    ({"norm": {"cls": "os.system"}}, "norm={'cls': 'os.system'}"),
    ({"widths": [[8, 8]]}, "widths=[[8, 8]]"),
])
def test_config_values_are_checked_against_the_signature(tmp_path, config, named):
    path = _ibtools_pt(tmp_path / "c.pt", "ibtools:mlp", config)
    for call in _api_calls(path):
        with pytest.raises(ValueError) as err:
            call()
        assert named in str(err.value)
    res = _cli(path, tmp_path)
    assert res.exit_code == 2 and named in res.output, res.output


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_parameter_estimate_is_exact_for_layernorm_models(name):
    """The size check counts parameters from the config alone; for LayerNorm models the count
    equals what the built model has, for others it is an upper bound."""
    for config in ({}, {"norm": "rms"}, {"norm": "batch"}, {"norm": "none"}):
        model = build_model(name, **config)
        actual = sum(p.numel() for p in model.parameters())
        estimate = estimate_parameters(name, config)
        if config.get("norm", model.config["norm"]) == "layer":
            assert estimate == actual
        assert actual <= estimate <= 1.1 * actual


def test_version_is_checked_by_the_one_reader(tmp_path):
    model = build_model("mlp", widths=[8])
    path = save_checkpoint(model, tmp_path / "m.pt")
    obj = torch.load(path, weights_only=True)
    obj["version"] = 2
    torch.save(obj, tmp_path / "v2.pt")
    for call in (lambda: load_model(tmp_path / "v2.pt"), lambda: load_checkpoint_dict(obj)):
        with pytest.raises(ValueError, match="unsupported ibtools checkpoint version 2"):
            call()
    back, info = load_model(path)  # the legitimate file still loads
    assert info["arch"] == "ibtools:mlp" and info["format"] == "ibtools"


# ----------------------------------------------------------------------------- not checkpoints


@pytest.mark.parametrize("head", [b"", b"\x80\x04", b"PK\x03\x04"])
def test_random_bytes_are_not_a_checkpoint(tmp_path, head):
    path = tmp_path / "noise.pt"
    path.write_bytes(head + os.urandom(4096))
    for call in _api_calls(path):
        with pytest.raises(ValueError, match="not a checkpoint") as err:
            call()
        assert not isinstance(err.value, UnsafePickleError)
        assert "trust_pickle" not in str(err.value) and "(unknown)" not in str(err.value)
    res = _cli(path, tmp_path)
    assert res.exit_code == 2 and "not a checkpoint" in res.output, res.output
    assert "--trust-pickle" not in res.output


def test_hugging_face_config_names_only_transformers_models(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(
        {"model_type": "gpt2", "architectures": ["pipeline"], "n_layer": 1, "n_embd": 8,
         "n_head": 2, "vocab_size": 16, "n_positions": 8}))
    with pytest.raises(ValueError, match="'pipeline', which is not a model class"):
        load_model(tmp_path / "hf")


# ----------------------------------------------------------------------------- the opt-ins


@pytest.fixture
def external(tmp_path, monkeypatch):
    """A legitimate factory in a module outside ibtools, and an ibtools-format file naming it."""
    (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
        from torch import nn

        def make(width: int = 8):
            return nn.Sequential(nn.Linear(64, width), nn.Tanh(), nn.Linear(width, 10))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10))
    path = _ibtools_pt(tmp_path / "ext.pt", "my_nets:make", {"width": 6}, net.state_dict())
    yield path, net
    sys.modules.pop("my_nets", None)


def test_trust_code_and_explicit_arch_allow_an_external_factory(external, tmp_path):
    path, net = external
    with pytest.raises(ValueError, match="my_nets:make"):
        load_model(path)
    for kwargs in ({"trust_code": True}, {"arch": "my_nets:make"}):
        model, info = load_model(path, **kwargs)
        torch.testing.assert_close(model[0].weight, net[0].weight)  # width 6 from the file
        assert info["arch"] == "my_nets:make" and info["missing_keys"] == []
    with pytest.raises(ValueError, match="bogus"):  # even trusted, the config is checked
        _ibtools_pt(tmp_path / "bad.pt", "my_nets:make", {"bogus": 1}, net.state_dict())
        load_model(tmp_path / "bad.pt", trust_code=True)
    for extra in (["--trust-code"], ["--arch", "my_nets:make"]):
        res = _cli(path, tmp_path, "--layers", "0", "--estimator", "binning:n_bins=5",
                   "--max-samples", "50", "--out", str(tmp_path / f"o{len(extra)}"), *extra)
        assert res.exit_code == 0, res.output
        assert (tmp_path / f"o{len(extra)}" / "results.csv").exists()


def test_hugging_face_directory_code_needs_trust_code(tmp_path):
    """Model code kept in a Hugging Face directory (auto_map) is refused without a prompt."""
    pytest.importorskip("transformers")
    marker, hf = tmp_path / "PWNED", tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(
        {"model_type": "evil", "architectures": ["EvilModel"],
         "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}))
    (hf / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(ValueError, match="trust_code=True"):
        load_model(hf)
    res = _cli(hf, tmp_path)
    assert res.exit_code == 2 and "--trust-code" in res.output, res.output
    assert not marker.exists()
