"""Checkpoint readers: the ordered registry behind load_model, save_model files through every
path, and a new format added as one reader class plus one registry line."""

import json

import numpy as np
import pytest
import torch

import ibtools
from ibtools.models.mlp import MLP
from ibtools.norms import swap_norms
from ibtools.probes import readers
from ibtools.probes.architectures import build_architecture
from ibtools.probes.checkpoints import load_model, load_state_dict_reported
from ibtools.probes.readers import CheckpointReader, register_reader


@pytest.fixture
def restore_readers():
    saved = list(readers.READERS)
    yield
    readers.READERS[:] = saved


def test_default_order_and_names():
    assert [r.name for r in readers.READERS] == ["huggingface", "saved-model", "file", "object",
                                                 "untrained"]


def test_load_model_reads_save_model_files_with_swapped_norms(tmp_path):
    torch.manual_seed(0)
    model = MLP(widths=(8, 6))
    swap_norms(model, to="ib-T", lam=2.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = ibtools.save_model(model, tmp_path / "swapped.pt", arch="ibtools:mlp",
                              arch_kwargs={"widths": [8, 6]}, meta={"seed": 7})
    loaded, info = load_model(path)  # before: needed arch= and then lost the swap
    again, info2 = ibtools.load_saved_model(path)
    x = torch.randn(5, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert torch.equal(again(x), model(x))
    assert info["format"] == "ibtools-model" == info2["format"]
    assert info["seed"] == 7 and info["norm_swap"]["to"] == "ib-T"


def test_unclaimed_directory_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="directory without config.json"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_model(tmp_path / "absent.pt")


def test_register_reader_checks_and_orders(restore_readers):
    class Nothing(CheckpointReader):
        name = "nothing"

        def claims(self, request):
            return False

    with pytest.raises(TypeError, match="not a checkpoint reader"):
        register_reader(object())
    with pytest.raises(ValueError, match="before='nope' names no registered reader"):
        register_reader(Nothing(), before="nope")
    register_reader(Nothing(), before="file")
    names = [r.name for r in readers.READERS]
    assert names.index("nothing") == names.index("file") - 1
    register_reader(Nothing())  # same name: replaced, now last
    assert [r.name for r in readers.READERS].count("nothing") == 1
    assert readers.READERS[-1].name == "nothing"


# --- a new format: one class and one registry line ------------------------------------------

SAFE_ARCHES = {"mlp": "ibtools:mlp"}


class NpzReader(CheckpointReader):
    """Weights as a NumPy ``.npz`` archive plus ``arch.json`` beside it naming an allowed model."""

    name = "npz"

    def claims(self, request):
        return request.path is not None and request.path.endswith(".npz")

    def read(self, request):
        with open(request.path[:-4] + ".arch.json") as f:
            spec = json.load(f)
        arch = SAFE_ARCHES[spec["arch"]]  # only names from the allow-list
        model = build_architecture(arch, **spec["kwargs"])
        with np.load(request.path) as arrays:
            state = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
        report = load_state_dict_reported(model, state, request.strict)
        return model.eval(), request.info(format="npz", arch=arch, config=spec["kwargs"],
                                          meta={"seed": spec["seed"]}, **report)


def _write_npz(model, path, seed):
    np.savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})
    with open(str(path)[:-4] + ".arch.json", "w") as f:
        json.dump({"arch": "mlp", "kwargs": {"widths": [8, 6]}, "seed": seed}, f)


def test_a_registered_format_is_analysed_with_no_other_edits(tmp_path, restore_readers):
    torch.manual_seed(1)
    model = MLP(widths=(8, 6)).eval()
    path = tmp_path / "weights.npz"
    _write_npz(model, path, seed=3)
    with pytest.raises(ValueError, match="not a checkpoint"):  # before registering: refused
        load_model(path)

    register_reader(NpzReader(), before="file")  # the one registry line

    loaded, info = load_model(path)
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert info["format"] == "npz" and info["seed"] == 3
    table = ibtools.analyze([str(path)], data="digits", estimators=["binning:n_bins=10"],
                            max_samples=200, device="cpu", progress=False)
    assert len(table) > 0 and table["i_xt"].notna().all()
    pt = tmp_path / "same.pt"
    torch.save(model.state_dict(), pt)
    reference = ibtools.analyze([str(pt)], arch="ibtools:mlp", arch_kwargs={"widths": [8, 6]},
                                data="digits", estimators=["binning:n_bins=10"], max_samples=200,
                                device="cpu", progress=False)
    np.testing.assert_allclose(table["i_xt"].to_numpy(), reference["i_xt"].to_numpy())
    np.testing.assert_allclose(table["i_ty"].to_numpy(), reference["i_ty"].to_numpy())
