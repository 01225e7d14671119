"""The declared seam between the analysis and the estimators (``layer_information``), the
errors the pipeline decides by (``ibtools.errors``) and the one settings object."""

import dataclasses
import json
import math
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

import ibtools
from ibtools import analysis, errors
from ibtools.analysis_settings import AnalysisSettings
from ibtools.estimators import KDE, MixtureEntropy, register
from ibtools.estimators.base import Estimator
from ibtools.estimators.layer_information import LayerInformation


class _Correlation(Estimator):
    """Toy: -ln(1 - r^2) / 2 of the first columns; a discrete y is read as numbers."""

    limitations = "Toy of the seam tests: first columns, linear dependence only."
    defaults: ClassVar[dict] = {}
    handles_discrete_x = True

    def _mi(self, x, y, x_discrete, y_discrete, rng):
        a, b = x.reshape(len(x), -1)[:, 0], y.reshape(len(y), -1)[:, 0]
        r = float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])
        return -0.5 * math.log1p(-min(r * r, 0.99)), {"r": r}, []


class SharedWork(_Correlation):
    """Overrides the seam: counts its calls and marks I(T;Y) so the table shows its use."""

    calls: ClassVar[list] = []

    def layer_information(self, x, t, t_prev, y, *, chain=None):
        type(self).calls.append((int(t.shape[1]), t_prev is None))
        plain = super().layer_information(x, t, t_prev, y, chain=chain)
        return plain._replace(i_ty=dataclasses.replace(plain.i_ty, value=0.125))


class BuggyEstimator(_Correlation):
    def _mi(self, x, y, x_discrete, y_discrete, rng):
        return None.value, {}, []  # an AttributeError: a bug, never a NaN row


class TypeBug(_Correlation):
    def _mi(self, x, y, x_discrete, y_discrete, rng):
        raise TypeError("unsupported operand type(s) for +: 'Tensor' and 'str'")


class FailsOnWide(_Correlation):
    """A numerical failure the estimator knows, on layers wider than 3 columns only."""

    def _mi(self, x, y, x_discrete, y_discrete, rng):
        if max(x.reshape(len(x), -1).shape[1], y.reshape(len(y), -1).shape[1]) > 3:
            raise errors.NumericalFailure("the kernel sum underflowed on this layer")
        return super()._mi(x, y, x_discrete, y_discrete, rng)


class WholeLayerFails(_Correlation):
    """An override that fails as a whole on the last layer (all three quantities at once)."""

    def layer_information(self, x, t, t_prev, y, *, chain=None):
        if t.shape[1] == 3:
            raise errors.EstimatorRefused("this toy takes no 3-wide layer")
        return super().layer_information(x, t, t_prev, y, chain=chain)


@pytest.fixture(autouse=True, scope="module")
def _toys():
    """The toys are registered while this file runs only: the contract tests, which run over
    every registered method, must not meet the deliberately broken ones."""
    import ibtools.estimators as E

    toys = {"seam-shared": SharedWork, "seam-buggy": BuggyEstimator, "seam-typebug": TypeBug,
            "seam-fails": FailsOnWide, "seam-whole": WholeLayerFails}
    for name, cls in toys.items():
        register(name, cls, replace=True)
    yield
    for name in toys:
        E._METHODS.pop(name, None)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 3))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=120)
    x = np.stack([y % 2, y // 2], axis=1).astype(np.float32)
    return x + 0.1 * rng.standard_normal((120, 2)).astype(np.float32), y


def _run(data, estimator, **kw):
    return ibtools.analyze({"net": _net()}, data=data, estimators=[estimator], device="cpu",
                           progress=False, max_samples=100, **kw)


def test_analyze_calls_an_estimators_own_layer_information(data):
    SharedWork.calls.clear()
    table = _run(data, "seam-shared")
    layers = list(table["layer"])
    assert len(layers) == 3 and len(SharedWork.calls) == 3  # once per layer, nothing else
    # the first layer has no T_prev (T_0 = X): the seam is not asked for it
    assert SharedWork.calls == [(6, True), (6, False), (3, False)]
    assert (table["i_ty"] == 0.125).all()  # the override's results are the rows'
    assert np.allclose(table["i_prev_t"].iloc[0], table["i_xt"].iloc[0])


@pytest.mark.parametrize("method, error", [("seam-buggy", AttributeError),
                                           ("seam-typebug", TypeError)])
def test_a_bug_inside_an_estimator_raises(data, method, error):
    with pytest.raises(error):
        _run(data, method)


def test_an_estimator_failure_is_a_nan_row_with_a_flag(data):
    with pytest.warns(analysis.EstimatorFailedWarning, match="underflowed") as caught:
        table = _run(data, "seam-fails")
    wide, narrow = table[table["layer"] == "0"].iloc[0], table[table["layer"] == "2"].iloc[0]
    assert math.isnan(wide["i_xt"]) and math.isnan(wide["ib_value"])
    flags = json.loads(wide["flag_text"])
    assert any(f.startswith("I(X;T) not computed (NumericalFailure: the kernel sum") for f in flags)
    assert "'net'" in str(caught[0].message) and "layer '0'" in str(caught[0].message)
    assert math.isfinite(narrow["i_ty"])  # the 3-wide output is still measured
    assert math.isnan(narrow["i_prev_t"])  # its T_prev is 6 wide


def test_a_seam_that_fails_as_a_whole_fails_its_three_quantities(data):
    with pytest.warns(analysis.EstimatorFailedWarning) as caught:
        table = _run(data, "seam-whole")
    last, first = table[table["layer"] == "2"].iloc[0], table[table["layer"] == "0"].iloc[0]
    assert all(math.isnan(last[q]) for q in ("i_xt", "i_ty", "i_prev_t", "ib_value"))
    flags = json.loads(last["flag_text"])
    assert sum("EstimatorRefused: this toy takes no 3-wide layer" in f for f in flags) == 3
    assert len(caught) == 3 and all(math.isfinite(first[q]) for q in ("i_xt", "i_ty"))


def test_kde_and_mixture_share_work_through_the_seam_with_the_plain_numbers():
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 3, (1100,), generator=g)
    x = torch.randn(1100, 2, generator=g)
    t = y[:, None].float() + torch.randn(1100, 4, generator=g)
    s = torch.randn(1100, 3, generator=g)
    kde = KDE(noise_var=0.2, deterministic=True)
    computed = []
    real = kde._compute_bounds
    kde._compute_bounds = lambda a: computed.append(int(a.shape[1])) or real(a)
    info = kde.layer_information(x, t, s, y)
    assert isinstance(info, LayerInformation) and computed.count(4) == 1  # T's bounds once
    plain = KDE(noise_var=0.2, deterministic=True)
    assert info.i_ty.value == plain.mutual_information(t, y, discrete_y=True).value
    assert info.i_xt.value == plain.mutual_information(x, t).value
    assert info.i_prev_t.value == plain.mutual_information(s, t).value
    mix = MixtureEntropy(noise_var=0.5, deterministic=True, mc_tolerance=0.05)
    shared = mix.layer_information(x, t, None, y)
    assert shared.i_prev_t is None and shared.i_xt.details["shared_draws"]
    assert shared.i_xt.value == shared.i_ty.details["mi_xt"]
    assert not hasattr(kde, "reuse_bounds") and not hasattr(mix, "reuse_draws")


def test_the_error_types_keep_the_builtin_types_callers_catch():
    assert issubclass(errors.InputError, ValueError)
    assert issubclass(errors.InputTypeError, TypeError)
    assert issubclass(errors.EstimatorRefused, ValueError)
    assert issubclass(errors.NumericalFailure, RuntimeError)
    from ibtools.estimators.neural import NeuralTrainingError

    assert NeuralTrainingError is errors.NeuralTrainingError
    assert issubclass(NeuralTrainingError, (ValueError, RuntimeError, errors.EstimatorFailed))
    with pytest.raises(errors.EstimatorRefused, match="n=3 samples is too few"):
        ibtools.mutual_information(np.zeros((3, 1)), np.zeros((3, 1)), method="ksg")
    with pytest.raises(errors.EstimatorRefused, match="NaN"):
        ibtools.mutual_information(np.full((50, 1), np.nan), np.zeros((50, 1)), method="ksg")


def test_settings_are_checked_once_and_frozen(data):
    settings = AnalysisSettings.from_arguments(estimators=["binning:n_bins=5"], betas=0.5,
                                               noise_paths=3)
    assert settings.betas == (0.5,) and settings.noise_paths == 3
    assert settings.record()["noise_paths"] == 3
    assert settings.threads_on("cpu") == 1 and settings.threads_on("cuda") is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 1
    for bad, match in (({"noise_paths": 1}, "noise_paths=1 is not accepted"),
                       ({"noise_paths": True}, "noise_paths=True"),
                       ({"threads": 0}, "threads=0 is not accepted"),
                       ({"reference": "output"}, "reference='output'")):
        with pytest.raises(errors.InputError, match=match):
            _run(data, "binning:n_bins=5", **bad)


def test_out_of_memory_in_the_capture_is_resource_exceeded_not_a_data_error(data, monkeypatch):
    import ibtools.probes

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(ibtools.probes, "capture_activations", no_memory)
    with pytest.raises(errors.ResourceExceeded, match=r"lower batch_size \(now 64\)") as info:
        _run(data, "binning:n_bins=5")
    assert isinstance(info.value, MemoryError) and "cannot take" not in str(info.value)


def test_data_an_estimator_refuses_is_a_flagged_nan_row_not_a_crash():
    """Token ids as X (one row per class) are data Ross's KSG refuses: that quantity is a NaN
    row with the refusal in its flag, the rest of the run goes on."""
    from ibtools.models.gpt import GPT

    torch.manual_seed(0)
    model = GPT(n_layer=1, n_embd=16, n_head=2, block_size=16)
    with pytest.warns(UserWarning, match="EstimatorRefused: x: every class has a single sample"):
        table = ibtools.analyze({"gpt": model}, data="text", estimators=["ksg:k=3"],
                                max_samples=120, progress=False)
    assert table["i_xt"].isna().all() and table["i_ty"].notna().all()
    assert table["flag_text"].str.contains("I\\(X;T\\) not computed").all()
    with pytest.raises(errors.EstimatorRefused, match="k=40 is more than a quarter"):
        ibtools.mutual_information(np.random.default_rng(0).normal(size=(100, 1)),
                                   np.random.default_rng(1).normal(size=(100, 1)),
                                   method="ksg", k=40)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_resource_exceeded_travels_through_pickle(protocol):
    """A Dask worker returns it to the driver by pickle; MemoryError's own __new__ must not
    get in the way (it did, depending on what ran before in the process)."""
    import pickle

    try:
        raise errors.ResourceExceeded("capturing ran out of device memory")
    except errors.ResourceExceeded as exc:
        exc.add_note("on worker 'w'")
        back = pickle.loads(pickle.dumps(exc, protocol=protocol))
    assert type(back) is errors.ResourceExceeded and isinstance(back, MemoryError)
    assert back.args == ("capturing ran out of device memory",)
    assert back.__notes__ == ["on worker 'w'"]
