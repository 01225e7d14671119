"""Bad input gets a clear error that names the argument (issue 15, section 4).

Each test here failed before the fix: object arrays broke inside NumPy, string-valued x was
reported as a problem with y, broken results files were not named, a config string was
iterated per character, a config mixing ``settings`` with top-level keys dropped one, and a
bad ``--device`` exited 1 (a failure) instead of 2 (a user error).
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import ibtools
import ibtools.errors
import ibtools.estimators.spec
import ibtools.models
from ibtools.cli import main
from ibtools.results import load_results


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    return x, x + rng.normal(size=(200, 2))


# --------------------------------------------------------------------------- object arrays


@pytest.mark.parametrize("method", ["ksg", "gaussian", "binning"])
def test_object_array_of_floats_reads_as_the_floats(xy, method):
    x, y = xy
    expected = ibtools.mutual_information(x, y, method=method, n_permutations=0).value
    got = ibtools.mutual_information(x.astype(object), y, method=method, n_permutations=0).value
    assert got == pytest.approx(expected, abs=1e-12)


def test_object_column_of_distinct_floats_is_continuous_not_200_classes(xy):
    # before: 200 distinct floats in an object array were read as 200 class labels
    x, y = xy
    as_floats = ibtools.mutual_information(x, y[:, 0], method="ksg")
    as_objects = ibtools.mutual_information(x, y[:, 0].astype(object), method="ksg")
    assert as_objects.value == pytest.approx(as_floats.value, abs=1e-12)
    assert as_objects.dims == (2, 1)
    # an object array of strings (a pandas column) still reads as class labels
    labels = np.array(["a", "b"] * 100)
    expected = ibtools.mutual_information(x, labels, method="kde").value
    got = ibtools.mutual_information(x, labels.astype(object), method="kde").value
    assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("bad, kind", [(None, "NoneType"), ({"a": 1}, "dict"), ("a", "str")])
def test_object_array_with_unusable_values_names_the_argument(xy, bad, kind):
    x, y = xy
    obj = x.astype(object)
    obj[3, 1] = bad
    with pytest.raises(TypeError, match=rf"^x is an object array .*{kind}.*row 3"):
        ibtools.mutual_information(obj, y, method="ksg")
    with pytest.raises(TypeError, match=r"^y is an object array"):
        ibtools.mutual_information(y, obj, method="kde")
    with pytest.raises(TypeError, match=r"^x is an object array"):
        ibtools.entropy(obj, method="ksg")


def test_list_holding_none_names_the_argument(xy):
    _, y = xy
    rows = [[1.0, None]] + [[float(i), 1.0] for i in range(199)]
    with pytest.raises(TypeError, match=r"^x is an object array .*NoneType"):
        ibtools.mutual_information(rows, y, method="ksg")


# --------------------------------------------------------------------------- strings in x


def test_string_x_with_one_class_per_row_names_x_not_y(xy):
    x, y = xy
    with pytest.raises(ValueError) as info:
        ibtools.mutual_information(x.astype(str), y, method="ksg")
    message = str(info.value)
    assert message.startswith("x: every class has a single sample"), message
    assert "discrete_x" in message or "float" in message
    # y unchanged: the same mistake in y is reported as y
    with pytest.raises(ValueError, match=r"^y: every class has a single sample"):
        ibtools.mutual_information(x, y.astype(str), method="ksg")


# --------------------------------------------------------------------------- results files


@pytest.mark.parametrize("name, payload", [
    ("results.csv", b"\xe4\xb9\x00\xff" * 50),
    ("results.csv", b""),
    ("results.json", b"{not json"),
], ids=["csv-not-utf8", "csv-empty", "json-garbage"])
def test_broken_results_file_is_named(tmp_path, name, payload):
    (tmp_path / name).write_bytes(payload)
    for target in (tmp_path, tmp_path / name):
        with pytest.raises(ValueError) as info:
            load_results(target)
        assert str(tmp_path / name) in str(info.value)
        assert "results" in str(info.value)


def test_cli_report_on_broken_results_names_the_file(tmp_path):
    (tmp_path / "results.csv").write_bytes(b"")
    res = CliRunner().invoke(main, ["report", str(tmp_path), "--no-pdf"])
    assert res.exit_code == 2, res.output
    assert str(tmp_path / "results.csv") in res.output


# --------------------------------------------------------------------------- config files


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """Run `ibtools analyze` up to the API call and record what it was given."""
    seen = {}

    def fake_analyze(checkpoints, **kwargs):
        seen.update(kwargs, checkpoints=checkpoints)
        import pandas as pd

        return pd.DataFrame()

    monkeypatch.setattr(ibtools, "analyze", fake_analyze)
    ck = tmp_path / "model.pt"
    ck.write_bytes(b"placeholder: the API call is replaced")
    return seen, ck


def _run_config(tmp_path, conf, *extra):
    path = tmp_path / "conf.json"
    path.write_text(json.dumps(conf))
    return CliRunner().invoke(main, ["analyze", "--config", str(path), "--no-report",
                                     "--out", str(tmp_path / "out"), *extra])


def test_config_single_strings_are_one_element_lists(tmp_path, captured):
    seen, ck = captured
    res = _run_config(tmp_path, {"checkpoints": str(ck), "estimators": "binning:n_bins=10",
                                 "layers": "layers.*", "betas": 0.5})
    assert res.exit_code == 0, res.output
    assert seen["checkpoints"] == [str(ck)]
    assert seen["estimators"] == ["binning:n_bins=10"]
    assert seen["layers"] == ["layers.*"]
    assert seen["betas"] == [0.5]


@pytest.mark.parametrize("conf, match", [
    ({"betas": "0.1"}, "'betas'"),
    ({"estimators": 3}, "'estimators'"),
    ({"layers": ["a", 2]}, "'layers'"),
    ({"checkpoints": [1, 2]}, "'checkpoints'"),
])
def test_config_wrong_types_name_the_key(tmp_path, captured, conf, match):
    _, ck = captured
    conf.setdefault("checkpoints", [str(ck)])
    res = _run_config(tmp_path, conf)
    assert res.exit_code == 2, res.output
    assert match in res.output and "conf.json" in res.output


def test_config_that_is_not_an_object_is_refused(tmp_path, captured):
    res = _run_config(tmp_path, [1, 2, 3])
    assert res.exit_code == 2, res.output
    assert "must hold an object" in res.output and "list" in res.output


def test_config_with_settings_and_top_level_estimators_is_an_error(tmp_path, captured):
    seen, ck = captured
    conf = {"checkpoints": [str(ck)], "estimators": ["binning"], "settings": {"seed": 3}}
    res = _run_config(tmp_path, conf)
    assert res.exit_code == 2, res.output
    assert "'settings'" in res.output and "'estimators'" in res.output
    assert not seen  # nothing ran
    # the layout `ibtools analyze` writes (metadata, checkpoints and betas at the top) is read
    conf = {"ibtools_version": "0.1.0", "torch_version": "2", "device": "cpu",
            "checkpoints": [str(ck)], "betas": [0.1],
            "settings": {"estimators": ["kde(noise_var=0.1)"], "seed": 3, "layers": None}}
    res = _run_config(tmp_path, conf)
    assert res.exit_code == 0, res.output
    assert seen["checkpoints"] == [str(ck)] and seen["seed"] == 3
    assert seen["estimators"] == ["kde(noise_var=0.1)"] and seen["betas"] == [0.1]


# --------------------------------------------------------------------------- --device


@pytest.mark.parametrize("value", ["banana", "cuda:x", "meta"])
@pytest.mark.parametrize("command", ["analyze", "demo"])
def test_bad_device_is_a_user_error(tmp_path, captured, command, value):
    _, ck = captured
    args = [command, "--device", value, "--out", str(tmp_path / "o"), "--no-report"]
    if command == "analyze":
        args.insert(1, str(ck))
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert "--device" in res.output and repr(value) in res.output
    assert "cpu" in res.output and "cuda:N" in res.output
    assert not (tmp_path / "o").exists()


def test_bad_device_through_the_api_is_a_value_error(tmp_path):
    # a --config device or a Python caller reaches analyze() itself: ValueError -> exit 2
    from ibtools.analysis import analyze

    with pytest.raises(ValueError, match=r"^device='banana' is not a device.*cpu.*cuda:N"):
        analyze([str(tmp_path / "never-read.pt")], device="banana", out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_unavailable_accelerator_is_a_user_error(tmp_path, captured):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _, ck = captured
    res = CliRunner().invoke(main, ["analyze", str(ck), "--device", "cuda", "--no-report",
                                    "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert "--device" in res.output and "no CUDA device" in res.output


def test_analyze_takes_one_estimator_spec_as_a_string():
    # list("binning") once made seven one-letter specs ('b' is not a method)
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    y = rng.integers(0, 3, 120)
    table = ibtools.analyze([model], data=(x, y), layers="1", estimators="binning:n_bins=5",
                            max_samples=120, progress=False)
    assert list(table["estimator"].unique()) == ["binning"]


def test_vit_refuses_a_zero_patch_size_by_name():
    from ibtools.models import build_model

    with pytest.raises(ValueError, match="patch_size must be a positive integer; got 0"):
        build_model("vit", patch_size=0)


# ----------------------------------------------------- errors decided by meaning (issue 19)


def _estimate_raising(monkeypatch, tmp_path, exc):
    """Run ``ibtools estimate`` with its array loader replaced by one that raises ``exc``."""
    import ibtools.cli

    def load(spec):
        raise exc

    monkeypatch.setattr(ibtools.cli, "_load_array", load)
    (tmp_path / "a.npy").write_bytes(b"")  # never read: the loader raises first
    return CliRunner().invoke(main, ["estimate", str(tmp_path / "a.npy"), "--method", "ksg"])


@pytest.mark.parametrize("exc", [
    ibtools.errors.InputError("k=0 is too small; it must be >= 1"),
    ibtools.errors.InputTypeError("k must be an integer; got 'x'"),
    ibtools.errors.EstimatorRefused("ksg needs at least 4 rows; got 2"),
    FileNotFoundError("no such file: 'gone.npy'"),
])
def test_cli_reports_ibtools_errors_as_user_errors(monkeypatch, tmp_path, exc):
    res = _estimate_raising(monkeypatch, tmp_path, exc)
    assert res.exit_code == 2, res.output
    assert str(exc) in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("exc", [TypeError("unsupported operand type(s) for +: 'int' and 'str'"),
                                 KeyError("n_bins"), AttributeError("'NoneType' object has no "
                                                                    "attribute 'shape'"),
                                 ValueError("too many values to unpack")])
def test_cli_shows_a_bug_with_its_traceback_and_exit_1(monkeypatch, tmp_path, exc):
    # a plain Python error is a bug, not bad input: before, TypeError/ValueError/KeyError were
    # all reported as a one-line user error (exit 2), hiding where the bug was
    res = _estimate_raising(monkeypatch, tmp_path, exc)
    assert res.exit_code == 1, res.output
    assert "Traceback (most recent call last)" in res.output
    assert f"{type(exc).__name__}: " in res.output
    assert "in load" in res.output  # the frame that raised is shown


def test_cli_reports_a_missing_package_in_one_line(monkeypatch, tmp_path):
    res = _estimate_raising(monkeypatch, tmp_path, ModuleNotFoundError("No module named 'dask'"))
    assert res.exit_code == 1
    assert "ModuleNotFoundError: No module named 'dask'" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("call, kind", [
    (lambda: ibtools.mutual_information(np.zeros((50, 1)), np.zeros((50, 1)), method="ksg", k=0),
     "InputError"),
    (lambda: ibtools.mutual_information(np.zeros((50, 1)), np.zeros((40, 1)), method="ksg"),
     "InputError"),
    (lambda: ibtools.mutual_information({"a": 1}, np.zeros((50, 1))), "InputTypeError"),
    (lambda: ibtools.estimators.spec.parse_estimator_spec("nosuchmethod"), "InputError"),
    (lambda: ibtools.estimators.spec.parse_estimator_spec(3), "InputTypeError"),
    (lambda: ibtools.load_dataset("digits", split="everything"), "InputError"),
    (lambda: ibtools.load_results("/nonexistent/results.csv"), "InputError"),
    (lambda: ibtools.models.build_model("mlp", norm="ib-S", lam=-1.0), "InputError"),
])
def test_bad_input_raises_ibtools_input_errors(call, kind):
    # ibtools' own types, still ValueError/TypeError for callers' `except` clauses
    with pytest.raises(ibtools.errors.InputError) as info:
        call()
    assert type(info.value).__name__ == kind
    assert isinstance(info.value, TypeError if kind == "InputTypeError" else ValueError)


@pytest.mark.parametrize("spec, kind, words", [
    ("mine:hidden=0", "InputError", "hidden=0 is not accepted"),
    ("renyi:sigma=bogus", "InputError", "sigma='bogus' is not a known rule"),
    ("infonce:critic=zzz", "InputError", "critic='zzz' is not accepted"),
    ("mixture:deterministic=3", "InputTypeError", "deterministic must be True or False"),
])
def test_an_estimator_spec_with_a_bad_value_is_an_input_error(tmp_path, spec, kind, words):
    # the spec is built once when parsed: whatever the estimator's own check raises about
    # its settings is reported as the caller's error, with the estimator's message
    with pytest.raises(ibtools.errors.InputError, match=words) as info:
        ibtools.estimators.spec.parse_estimator_spec(spec)
    assert type(info.value).__name__ == kind
    np.save(tmp_path / "a.npy", np.zeros((10, 1)))
    method, _, setting = spec.partition(":")
    res = CliRunner().invoke(main, ["estimate", str(tmp_path / "a.npy"), "--method", method,
                                    "--set", setting])
    assert res.exit_code == 2 and words in res.output, res.output
