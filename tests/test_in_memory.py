"""analyze() on models and data held in memory: naming, data forms, capture memory controls,
and one estimator failing on one layer without ending the run (#21)."""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import ibtools
from ibtools import analysis
from ibtools.estimators.binning import Binning
from ibtools.results import RESULTS_CSV, load_results

SPEC = ["binning:n_bins=4"]


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 3))


@pytest.fixture(scope="module")
def data():
    """Four classes laid out on a 2-d grid: the label is a function of X."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=240)
    x = np.stack([y % 2, y // 2], axis=1).astype(np.float32) + 0.01 * rng.standard_normal(
        (240, 2)).astype(np.float32)
    return x, y


def _run(models, data, **kw):
    kw.setdefault("estimators", SPEC)
    kw.setdefault("max_samples", 500)
    return ibtools.analyze(models, data=data, device="cpu", progress=False, **kw)


def _entropy(y):
    p = np.bincount(y) / len(y)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def test_two_models_of_one_class_are_two_models(data):
    a, b = _net(0), _net(1)
    table = _run([a, b], data)
    assert len(table) == 2 * 3  # old code: 3 rows, the second Sequential dropped silently
    assert list(dict.fromkeys(table["checkpoint"])) == ["Sequential", "Sequential-2"]
    assert list(dict.fromkeys(table["model"])) == ["Sequential", "Sequential-2"]
    # the second model's own activations: its tanh layer differs from the first's
    t = table.set_index(["checkpoint", "layer"])["i_xt"]
    assert t[("Sequential", "2")] != t[("Sequential-2", "2")] or \
        t[("Sequential", "1")] != t[("Sequential-2", "1")]


def test_dict_names_are_the_rows_names(data):
    table = _run({"layernorm": _net(0), "ib-S": _net(1)}, data)
    assert list(dict.fromkeys(table["checkpoint"])) == ["layernorm", "ib-S"]
    assert list(dict.fromkeys(table["model"])) == ["layernorm", "ib-S"]
    with pytest.raises(TypeError, match="keys name the models"):
        _run({"": _net(0)}, data)
    with pytest.raises(TypeError, match="item 1 is a int"):
        _run([_net(0), 3], data)


def test_one_sequential_is_one_model_and_tuple_data_reads_true_entropy(data):
    x, y = data
    # old code iterated the Sequential into its children and failed
    table = _run(_net(0), (x, y))
    assert len(table) == 3
    # the first Linear is injective on this data: the plug-in I(T;Y) on 4 bins per axis is
    # the empirical label entropy (every grid cell holds one class)
    first = table[table["layer"] == "0"].iloc[0]
    assert first["i_ty"] == pytest.approx(_entropy(y), abs=1e-9)
    assert first["n_samples"] == len(y)


def test_dataloader_and_tensors_give_the_tuple_numbers(data):
    x, y = data
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=64)
    model = _net(0)
    by_tuple = _run(model, (x, y))
    by_loader = _run(model, loader)
    by_tensor = _run(model, (torch.from_numpy(x), torch.from_numpy(y)))
    for other in (by_loader, by_tensor):
        np.testing.assert_allclose(other["i_xt"], by_tuple["i_xt"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(other["i_ty"], by_tuple["i_ty"], rtol=0, atol=1e-12)
    with pytest.raises(TypeError, match="data"):
        _run(model, 42)
    shuffled = torch.utils.data.DataLoader(loader.dataset, batch_size=64, shuffle=True)
    with pytest.warns(UserWarning, match="shuffle=False"):
        _run(model, shuffled)


def test_spilled_capture_matches_memory_and_leaves_nothing(data, tmp_path):
    model = _net(0)
    spill = tmp_path / "spill"
    in_memory = _run(model, data, memory_budget=None)
    spilled = _run(model, data, memory_budget="1KiB", spill_dir=spill)
    np.testing.assert_allclose(spilled["i_xt"], in_memory["i_xt"], rtol=0, atol=1e-12)
    assert spill.is_dir() and not any(spill.iterdir())  # this run's capture-* removed
    with pytest.raises(ValueError, match="memory_budget"):
        _run(model, data, memory_budget="lots")
    with pytest.raises(ValueError, match="batch_size=0"):
        _run(model, data, batch_size=0)


def _overflow_on_wide(monkeypatch):
    real = Binning.mutual_information

    def failing(self, a, b, *args, **kwargs):
        if torch.as_tensor(a).reshape(len(a), -1).shape[1] == 6:  # the 6-wide hidden layers
            raise OverflowError(34, "Numerical result out of range")
        return real(self, a, b, *args, **kwargs)

    monkeypatch.setattr(Binning, "mutual_information", failing)


def test_a_failing_estimator_is_a_nan_row_with_a_flag(data, monkeypatch, tmp_path):
    _overflow_on_wide(monkeypatch)
    with pytest.warns(analysis.EstimatorFailedWarning) as caught:
        table = _run({"net": _net(0)}, data, out_dir=tmp_path / "run")
    assert len(table) == 3  # old code: OverflowError ended the run
    wide = table[table["layer"] == "0"].iloc[0]
    assert math.isnan(wide["i_ty"])
    assert any("OverflowError" in f for f in json.loads(wide["flag_text"]))
    message = str(caught[0].message)
    assert "'net'" in message and "layer '0'" in message and "binning" in message
    last = table[table["layer"] == "2"].iloc[0]
    assert math.isfinite(last["i_ty"])  # the 3-wide output still computed
    assert (tmp_path / "run" / RESULTS_CSV).is_file()


def test_a_programming_error_still_surfaces(data, monkeypatch):
    def broken(self, a, b, *args, **kwargs):
        raise AttributeError("a bug, not a property of the data")

    monkeypatch.setattr(Binning, "mutual_information", broken)
    with pytest.raises(AttributeError, match="a bug"):
        _run(_net(0), data)


def test_a_journal_alone_reads_as_a_table(data, tmp_path):
    table = _run({"net": _net(0)}, data, out_dir=tmp_path / "run")
    run = tmp_path / "journal-only"
    run.mkdir()
    with open(run / "results.partial.jsonl", "w") as fh:
        for row in table.to_dict("records")[:2]:
            fh.write(json.dumps(row, default=str) + "\n")
        fh.write('{"cut sho')  # an interrupted last line
    with pytest.warns(UserWarning, match="stopped before finishing"):
        partial = load_results(run)
    assert list(partial["layer"]) == ["0", "1"] or list(partial["layer"].astype(str)) == ["0", "1"]
    np.testing.assert_allclose(partial["i_xt"], table["i_xt"].iloc[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from ibtools.reports import build_report_content

        content = build_report_content(partial)
    assert content.summary


def test_no_result_column_is_shadowed_by_a_pandas_attribute(data):
    from ibtools.results import COLUMNS

    table = _run(_net(0), data)
    shadowed = [c for c in COLUMNS if hasattr(pd.DataFrame, c)]
    assert shadowed == []  # old code: 'flags' (table.flags is pandas' DataFrame.flags)
    assert isinstance(table.flag_text, pd.Series)
    assert all(isinstance(json.loads(v), list) for v in table.flag_text)


def test_progress_defaults_to_bars_in_a_notebook_kernel(monkeypatch):
    import sys
    import types

    from ibtools import inputs

    monkeypatch.setattr(sys, "stderr", types.SimpleNamespace(isatty=lambda: False))
    assert inputs.show_progress(None) is False and inputs.show_progress(True) is True
    kernel = types.SimpleNamespace(kernel=object())  # what a Jupyter kernel's shell holds
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    assert inputs.show_progress(None) is True  # old code: stderr is no tty, so no bars
