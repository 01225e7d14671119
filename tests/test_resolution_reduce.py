"""Resolution from the data (bin_width=auto, noise_var=auto), layer reductions (pool,
channels, project:K) and fx capture of functional ops (#21)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ibtools
from ibtools.estimators.spec import parse_estimator_spec
from ibtools.probes import capture_activations
from ibtools.probes.reduce import Reducer, from_cli, parse_reduce


def _clustered(n=600, classes=8, dim=32, seed=0):
    """A classifier-like layer: class centres far apart, small spread around them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=g) * 3.0
    t = centres[y] + 0.3 * torch.randn(n, dim, generator=g)
    x = torch.randn(n, 50, generator=g)  # the inputs: n distinct rows
    return x, t, y


def _est(spec):
    return parse_estimator_spec(spec).build(deterministic=True) if spec.startswith("kde") \
        else parse_estimator_spec(spec).build()


# ---------------------------------------------------------------- resolution


@pytest.mark.parametrize("fixed, auto", [("binning:n_bins=30", "binning:bin_width=auto"),
                                         ("kde:noise_var=0.001", "kde:noise_var=auto")])
def test_following_the_saturation_advice_unsaturates(fixed, auto):
    x, t, y = _clustered()
    n, h_y = t.shape[0], math.log(8)
    saturated = _est(fixed).mutual_information(x, t)
    assert saturated.value > 0.99 * math.log(n)
    advice = " ".join(f for f in saturated.flags if "saturated" in f)
    assert "auto" in advice  # the flag names the setting to use
    fixed_xt = _est(auto).mutual_information(x, t)
    # clearly below ln n = 6.40, and not collapsed to 0
    assert 1.0 < fixed_xt.value < math.log(n) - 0.5
    assert not any("saturated" in f for f in fixed_xt.flags)
    # the classes stay separated at the chosen resolution: I(T;Y) = H(Y) = ln 8
    ty = _est(auto).mutual_information(t, y, discrete_y=True)
    assert ty.value == pytest.approx(h_y, abs=0.02)
    assert "auto_resolution" in fixed_xt.details


def test_kde_auto_noise_follows_the_scale():
    # the rule is scale-equivariant: T * 10 gets 100x the noise variance and the same MI
    x, t, _ = _clustered(n=300)
    a = _est("kde:noise_var=auto").mutual_information(x, t)
    b = _est("kde:noise_var=auto").mutual_information(x, 10 * t)
    assert b.details["auto_resolution"]["noise_var"] == pytest.approx(
        100 * a.details["auto_resolution"]["noise_var"], rel=1e-6)
    assert b.value == pytest.approx(a.value, abs=1e-6)
    assert _est("kde:noise_var=auto").noise_var == "auto"  # restored after the call


def test_bad_auto_combination_is_refused():
    with pytest.raises(ValueError, match="bin_width='auto'.*quantile"):
        parse_estimator_spec("binning:bin_width=auto,strategy='quantile'")
    with pytest.raises(TypeError, match="noise_var='loud'.*'auto'"):
        parse_estimator_spec("kde:noise_var='loud'")
    with pytest.raises(TypeError, match="bin_width='wide'.*'auto'"):
        parse_estimator_spec("binning:bin_width='wide'")


# ---------------------------------------------------------------- reductions


def test_reduction_shapes_values_and_seeds():
    t = torch.randn(5, 4, 6, 3)
    r = Reducer({"conv*": "pool", "maxed": "pool:max", "chan": "channels",
                 "wide": "project:8"}, seed=1)
    assert torch.allclose(r.spatial(t, "conv1"), t.mean(dim=(2, 3)))
    assert torch.allclose(r.spatial(t, "maxed"), t.amax(dim=(2, 3)))
    assert torch.allclose(r.spatial(t, "chan"), t.mean(dim=1).reshape(5, 18))
    assert r.spatial(t, "other").shape == t.shape and r.rule_for("other") == "none"
    rows = t.reshape(5, -1)
    p1 = r.project(rows, "wide")
    assert p1.shape == (5, 8)
    assert torch.equal(p1, Reducer({"wide": "project:8"}, seed=1).project(rows, "wide"))
    assert not torch.equal(p1, Reducer({"wide": "project:8"}, seed=2).project(rows, "wide"))


def test_projection_keeps_distances():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(40, 2000, generator=g)
    proj = Reducer("project:512", seed=0).project(rows, "layer")
    ratio = torch.pdist(proj) / torch.pdist(rows)
    assert abs(float(ratio.mean()) - 1.0) < 0.02 and float(ratio.std()) < 0.05


def test_reduce_parsing_and_errors():
    assert parse_reduce("pool") == {"**": "pool:mean"}
    assert from_cli(("conv*=pool", "project:16")) == {"conv*": "pool:mean", "**": "project:16"}
    with pytest.raises(ValueError, match=r"reduce='squash'.*project:K"):
        parse_reduce("squash")
    with pytest.raises(ValueError, match="project:0"):
        parse_reduce({"fc": "project:0"})
    with pytest.raises(TypeError, match="reduce=3"):
        parse_reduce(3)


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 8 * 8, 4)

    def forward(self, x, unused_flag=False):
        h = F.relu(self.conv(x))
        return self.fc(F.max_pool2d(h, 1).flatten(1))


def _data(n=240):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 4


def test_analyze_records_reduction_and_resolution(tmp_path):
    torch.manual_seed(0)
    x, y = _data()
    table = ibtools.analyze({"net": _ConvNet()}, data=(x, y), layers=["conv", "fc"],
                            estimators=["kde:noise_var=auto"], reduce={"conv": "pool"},
                            max_samples=240, progress=False, out_dir=tmp_path)
    by_layer = table.set_index("layer")
    assert by_layer.loc["conv", "reduction"] == "pool:mean"
    assert by_layer.loc["conv", "dim"] == 6 and by_layer.loc["fc", "reduction"] == "none"
    noise = json.loads(by_layer.loc["conv", "resolution"])["noise_var"]
    assert noise > 0
    assert by_layer.loc["conv", "i_xt"] < math.log(240) - 0.5
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["settings"]["reduce"] == {"conv": "pool:mean"}


# ---------------------------------------------------------------- fx capture


def test_fx_capture_of_functional_relu_equals_manual():
    torch.manual_seed(0)
    model, (x, y) = _ConvNet(), _data(40)
    acts = capture_activations(model, (x, y), layers=["fx:relu", "conv", "fx:max_pool*"])
    assert acts.layers == ["conv", "fx:relu", "fx:max_pool2d"]
    with torch.no_grad():
        manual = F.relu(model.conv(x)).reshape(40, -1)
    assert torch.equal(acts["fx:relu"], manual)
    assert acts.settings["fx_traced"] is True
    plain = capture_activations(model, (x, y), layers="conv")
    assert plain.settings["fx_traced"] is False  # module hooks stay the default


def test_fx_unknown_node_and_untraceable_model():
    model, data = _ConvNet(), _data(8)
    with pytest.raises(ValueError, match=r"'fx:softmax' matches no node.*relu"):
        capture_activations(model, data, layers="fx:softmax")

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = -x
            return self.lin(F.relu(x.flatten(1)))

    with pytest.raises(ValueError, match=r"torch.fx trace of model Branchy.*failed"):
        capture_activations(Branchy(), data, layers="fx:relu")
    assert capture_activations(Branchy(), data, layers="lin")["lin"].shape == (8, 3)


def test_cli_reduce_option(tmp_path):
    from click.testing import CliRunner

    from ibtools.cli import main

    ckpt = tmp_path / "net.pt"
    ckpt.write_bytes(b"")
    res = CliRunner().invoke(main, ["analyze", str(ckpt), "--reduce", "squash",
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "'squash'" in res.output and "project:K" in res.output
    res = CliRunner().invoke(main, ["analyze", str(ckpt), "--reduce", "pool",
                                    "--reduce", "channels", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "several bare rules" in res.output
