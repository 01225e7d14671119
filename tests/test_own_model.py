"""The CLI on your own model (#21): --arch module:factory from the current directory,
--arch-arg, --no-strict, a swap_norms'd model saved so that the CLI rebuilds it, and messages
in the command line's words."""

import sys
import warnings

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import ibtools
from ibtools.cli import main
from ibtools.cli_helpers import cli_wording
from ibtools.norms import describe_norms, swap_norms
from ibtools.saving import load_saved_model, norm_swap, save_model

FACTORY = '''
from torch import nn

def tiny(width=8, classes=10):
    return nn.Sequential(nn.Linear(64, width), nn.LayerNorm(width), nn.Tanh(),
                         nn.Linear(width, classes))
'''
ARGS = ["--data", "digits", "--estimator", "binning:n_bins=4", "--max-samples", "60",
        "--no-report", "--no-progress", "--threads", "1"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A directory holding mymodels.py, made the current directory (as a user's project)."""
    (tmp_path / "mymodels.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("mymodels", None)


def _model(width=8):
    torch.manual_seed(0)
    sys.path.insert(0, ".")
    try:
        import mymodels
    finally:
        sys.path.remove(".")
    return mymodels.tiny(width=width)


def test_factory_in_cwd_with_arch_args_and_the_path_left_alone(project):
    torch.save(_model(width=12).state_dict(), "w.pt")
    sys.modules.pop("mymodels", None)
    before = list(sys.path)
    res = CliRunner().invoke(main, ["analyze", "w.pt", "--arch", "mymodels:tiny", "--arch-arg",
                                    "width=12", "--out", "run", *ARGS])
    assert res.exit_code == 0, res.output
    assert sys.path == before  # the cwd was on sys.path for the import only
    table = pd.read_csv(project / "run" / "results.csv")
    assert set(table["dim"]) >= {12}  # the factory got width=12 (old CLI: no --arch-arg)
    bad = CliRunner().invoke(main, ["analyze", "w.pt", "--arch", "mymodels:tiny",
                                    "--arch-arg", "width", "--out", "run2", *ARGS])
    assert bad.exit_code == 2 and "--arch-arg 'width' is not KEY=VALUE" in bad.output


def test_no_strict_loads_what_matches_and_names_the_rest(project):
    state = _model().state_dict()
    del state["3.weight"]  # as a tied lm_head a file does not store
    torch.save(state, "w.pt")
    strict = CliRunner().invoke(main, ["analyze", "w.pt", "--arch", "mymodels:tiny",
                                       "--out", "run", *ARGS])
    assert strict.exit_code == 2
    assert "use --no-strict" in strict.output and "3.weight" in strict.output
    assert "strict=False" not in strict.output
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loose = CliRunner().invoke(main, ["analyze", "w.pt", "--arch", "mymodels:tiny",
                                          "--no-strict", "--out", "run", *ARGS])
    assert loose.exit_code == 0, loose.output
    assert any("3.weight" in str(w.message) for w in caught)


def test_a_swapped_model_saved_is_rebuilt_by_the_cli(project):
    model = _model()
    swap_norms(model, to="ib-S", lam=1.5)
    path = save_model(model, "ibs.pt", arch="mymodels:tiny", arch_kwargs={"width": 8},
                      meta={"step": 7})
    rebuilt, info = load_saved_model(path, trust_code=True)
    assert describe_norms(rebuilt) == {"norm": "ib-S", "lam": 1.5}
    x = torch.randn(5, 64)
    torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    assert info["step"] == 7 and info["norm_swap"] == {"to": "ib-S", "order": "compress_first"}
    # the file may not choose the factory by itself; the CLI says how to allow it
    refused = CliRunner().invoke(main, ["analyze", "ibs.pt", "--out", "r0", *ARGS])
    assert refused.exit_code == 2 and "--arch 'mymodels:tiny'" in refused.output
    res = CliRunner().invoke(main, ["analyze", "ibs.pt", "--arch", "mymodels:tiny",
                                    "--out", "run", *ARGS])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(project / "run" / "results.csv")
    assert set(table["norm"]) == {"ib-S"} and set(table["lam"]) == {1.5}
    direct = ibtools.analyze({"ibs.pt": model}, data="digits", estimators=["binning:n_bins=4"],
                             max_samples=60, progress=False, threads=1)
    pd.testing.assert_series_equal(table["i_xt"], direct["i_xt"], check_names=False)


def test_a_partial_swap_is_refused_when_saving(project):
    model = _model()
    assert norm_swap(model) is None
    from ibtools.norms.modules import IBNorm

    model2 = torch.nn.Sequential(torch.nn.LayerNorm(4), IBNorm(4, lam=1.0))
    with pytest.raises(ValueError, match="1 norm\\(s\\) are IBNorm but 1 are not"):
        save_model(model2, "x.pt", arch="mymodels:tiny")
    with pytest.raises(ValueError, match="arch="):
        save_model(model, "x.pt", arch="tiny")


def test_api_advice_reads_as_options():
    assert cli_wording("the checkpoint does not say its architecture; pass arch= as one of "
                       "(\"'ibtools:<mlp|...>'\", \"'hf:<dir>'\")") == (
        "the checkpoint does not say its architecture; use --arch ibtools:<mlp|cnn|vit|gpt|"
        "llama>, --arch hf:DIR, --arch torchvision:<name>, --arch timm:<name> or --arch "
        "module:factory (a module in the current directory works)")
    assert cli_wording("arch='nosuch:f': cannot import 'nosuch' (No module named 'nosuch')") == (
        "--arch 'nosuch:f': cannot import 'nosuch' (No module named 'nosuch') (the current "
        "directory was searched too)")
    assert cli_wording("x; pass strict=False to load what matches") == (
        "x; use --no-strict to load what matches")
    assert cli_wording("use another directory or overwrite=True (--overwrite)") == (
        "use another directory or --overwrite")
