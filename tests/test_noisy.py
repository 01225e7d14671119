"""Noisy modes (#17): the analysis-time channel and Goldfeld's noisy-network I(X;T)."""

import json
import math

import pandas as pd
import pytest
import torch
from torch import nn

import ibtools
from ibtools.estimators.mixture import MixtureEntropy
from ibtools.models import MLP
from ibtools.models.layers import GaussianNoise, NoiseSource
from ibtools.noisy import noisy_network_information


def _digits(n=200, seed=0):
    from sklearn.datasets import load_digits

    d = load_digits()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(d.target), generator=g)[:n]
    x = torch.as_tensor(d.data, dtype=torch.float32)[idx] / 16.0
    return x, torch.as_tensor(d.target)[idx]


def _mlp(**kw):
    torch.manual_seed(0)
    return MLP(widths=(12, 6), norm="none", **kw)


def test_analysis_noise_sets_mixture_noise_var_and_records_mode():
    x, y = _digits()
    model = _mlp()
    s = 0.6
    table = ibtools.analyze([model], data=(x, y), estimators=["mixture"], noise_std=s,
                            max_samples=200, progress=False)
    assert set(table["mode"]) == {"analysis-noise"}
    assert (table["noise_std"] == s).all()
    params = [json.loads(p) for p in table["params"]]
    assert all(p["noise_var"] == pytest.approx(s * s) for p in params)
    assert all(lab.endswith("@noise_std=0.6") for lab in table["setting"])
    # the row is the mixture at noise_var = S^2 on the activations themselves (no sampled
    # noise): the direct estimate agrees within Monte Carlo error, the default 0.1 does not
    with torch.no_grad():
        t0 = model.layers[0](x)
    direct = MixtureEntropy(noise_var=s * s, deterministic=True).mutual_information(x, t0)
    other = MixtureEntropy(noise_var=0.1, deterministic=True).mutual_information(x, t0)
    row = table[table["layer"] == "layers.0"].iloc[0]
    assert row["i_xt"] == pytest.approx(direct.value, abs=0.05)
    assert abs(row["i_xt"] - other.value) > 0.3
    # I(T_prev;T) of the second layer is the noisy chain I(T_0 + Z'; T_1 + Z)
    with torch.no_grad():
        t1 = model.layers[1](t0)
    chain = MixtureEntropy(noise_var=s * s).chain_information(t0, t1)
    second = table[table["layer"] == "layers.1"].iloc[0]
    assert second["i_prev_t"] == pytest.approx(chain.value, abs=0.05)
    plain = ibtools.analyze([model], data=(x, y), estimators=["mixture"], max_samples=200,
                            progress=False)
    assert set(plain["mode"]) == {"deterministic"} and (plain["noise_std"] == 0).all()


def test_noise_sweep_gives_one_row_set_per_std_and_seeded_sampled_noise():
    x, y = _digits()
    model = _mlp()
    kw = dict(data=(x, y), estimators=["mixture", "binning:n_bins=4"], noise_std=[0.2, 0.6],
              max_samples=200, progress=False)
    table = ibtools.analyze([model], **kw)
    assert len(table) == 2 * 2 * 2  # S x settings x layers
    for s in (0.2, 0.6):
        part = table[table["noise_std"] == s]
        assert len(part) == 4 and set(part["mode"]) == {"analysis-noise"}
    mix = table[table["estimator"] == "mixture"].set_index(["noise_std", "layer"])["i_xt"]
    assert mix[(0.6, "layers.0")] < mix[(0.2, "layers.0")] - 0.3  # more noise, less info
    # binning sees sampled noise: its values change with S, and a rerun repeats them
    binning = table[table["estimator"] == "binning"].set_index(["noise_std", "layer"])
    plain = ibtools.analyze([model], **dict(kw, noise_std=None))
    plain_bin = plain[plain["estimator"] == "binning"].set_index("layer")
    assert binning.loc[(0.6, "layers.0"), "i_xt"] != plain_bin.loc["layers.0", "i_xt"]
    again = ibtools.analyze([model], **kw)
    torch.testing.assert_close(torch.tensor(again["i_xt"].to_numpy()),
                               torch.tensor(table["i_xt"].to_numpy()))


def test_noise_std_bad_values_are_refused():
    x, y = _digits(50)
    for bad in (-1.0, 0.0, float("nan"), "a", [], [0.1, 0.1]):
        with pytest.raises((ValueError, TypeError), match="noise_std"):
            ibtools.analyze([_mlp()], data=(x, y), noise_std=bad, max_samples=50,
                            progress=False)
    with pytest.raises(ValueError, match="transform"):
        ibtools.analyze([_mlp()], data=(x, y), estimators=["mixture:transform='copula'"],
                        noise_std=0.1, max_samples=50, progress=False)


def _saved_mlp(tmp_path):
    path = tmp_path / "m.pt"
    ibtools.save_model(_mlp(), path, arch="ibtools:mlp",
                       arch_kwargs={"widths": [12, 6], "norm": "none"})
    return path


def _cli_analyze(path, out, *args):
    from click.testing import CliRunner

    from ibtools.cli import main

    return CliRunner().invoke(main, ["analyze", str(path), *args, "--max-samples", "100",
                                     "--out", str(out), "--no-report"])


def test_cli_noise_std_sweep_and_bad_value(tmp_path):
    path, out = _saved_mlp(tmp_path), tmp_path / "run"
    res = _cli_analyze(path, out, "--estimator", "mixture", "--noise-std", "0.2",
                       "--noise-std", "0.5")
    assert res.exit_code == 0, res.output
    table = ibtools.load_results(out)
    assert sorted(set(table["noise_std"])) == [0.2, 0.5]
    assert json.loads((out / "config.json").read_text())["settings"]["noise_std"] == [0.2, 0.5]
    bad = _cli_analyze(path, tmp_path / "bad", "--noise-std", "-1")
    assert bad.exit_code == 2 and "noise_std" in bad.output


def test_layer_relative_channel_reads_a_layer_and_a_multiple_of_it_alike():
    x, y = _digits()
    model = nn.Sequential(nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 6))
    torch.manual_seed(1)
    big = nn.Sequential(nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 6))
    big.load_state_dict(model.state_dict())
    with torch.no_grad():
        big[2].weight.mul_(10.0)
        big[2].bias.mul_(10.0)
    kw = dict(data=(x, y), layers=["1", "2"], estimators=["kde", "binning:n_bins=4"],
              reference="previous", noise_std=0.5, max_samples=200, progress=False)
    rel = ibtools.analyze({"m": model, "big": big}, noise_scale="layer", **kw)
    assert all("@noise_rel=0.5" in s for s in rel["setting"])
    assert set(rel["mode"]) == {"analysis-noise"} and (rel["noise_std"] == 0.5).all()
    by = rel.set_index(["model", "layer", "setting"]).sort_index()
    for q in ("i_xt", "i_ty", "i_prev_t"):
        a, b = by.loc["m", q], by.loc["big", q]
        assert a.to_numpy() == pytest.approx(b.to_numpy(), abs=1e-6)
    # the absolute channel reads the tenfold layer as more information (fewer rows merge)
    absolute = ibtools.analyze({"m": model, "big": big}, **kw).set_index(
        ["model", "layer", "setting"])
    kde = "kde(noise_var=0.25)@noise_std=0.5"
    assert absolute.loc[("big", "2", kde), "i_xt"] > absolute.loc[("m", "2", kde), "i_xt"] + 0.5
    # and the relative channel at S is the absolute channel at S x the layer's scale
    with torch.no_grad():
        t = model[:3](x)
    scale = float(t.double().var(dim=0, unbiased=False).mean().sqrt())
    from ibtools.noise_channel import layer_scale

    assert layer_scale(t) == pytest.approx(scale)
    direct = ibtools.estimators.kde.KDE(noise_var=(0.5 * scale) ** 2,
                                        deterministic=True).mutual_information(x, t)
    rel_kde = by.loc[("m", "2", "kde(noise_var=0.25)@noise_rel=0.5"), "i_xt"]
    assert rel_kde == pytest.approx(direct.value, abs=1e-6)


def test_noise_scale_is_checked_and_needs_a_channel():
    x, y = _digits(50)
    with pytest.raises(ValueError, match="noise_scale='rms'"):
        ibtools.analyze([_mlp()], data=(x, y), noise_std=0.1, noise_scale="rms",
                        max_samples=50, progress=False)
    with pytest.raises(ValueError, match="noise_scale='layer' needs noise_std"):
        ibtools.analyze([_mlp()], data=(x, y), noise_scale="layer", max_samples=50,
                        progress=False)


def test_cli_noise_scale_layer(tmp_path):
    path, out = _saved_mlp(tmp_path), tmp_path / "run"
    res = _cli_analyze(path, out, "--estimator", "kde", "--noise-std", "0.5",
                       "--noise-scale", "layer")
    assert res.exit_code == 0, res.output
    table = ibtools.load_results(out)
    assert all(s.endswith("@noise_rel=0.5") for s in table["setting"])
    # a resume with the other scale is refused: its settings are other rows
    again = _cli_analyze(path, out, "--estimator", "kde", "--noise-std", "0.5")
    assert again.exit_code != 0 and "estimators" in again.output


class _LinearNoisy(nn.Module):
    """x -> A1 x + Z1 -> A2 (.) + Z2, noise of std sigma after each map."""

    def __init__(self, a1, a2, sigma):
        super().__init__()
        source = NoiseSource(3)
        self.l1 = nn.Linear(a1.shape[1], a1.shape[0], bias=False)
        self.l2 = nn.Linear(a2.shape[1], a2.shape[0], bias=False)
        with torch.no_grad():
            self.l1.weight.copy_(a1)
            self.l2.weight.copy_(a2)
        self.n1, self.n2 = GaussianNoise(sigma, source), GaussianNoise(sigma, source)

    def forward(self, x):
        return self.n2(self.l2(self.n1(self.l1(x))))


def _logdet(m):
    return float(torch.logdet(m.double()))


def test_noisy_network_information_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    a1, a2, sigma = torch.randn(2, 3, generator=g), torch.randn(2, 2, generator=g), 1.0
    eye = torch.eye(2, dtype=torch.float64)
    s2 = sigma ** 2
    a1d, a2d = a1.double(), a2.double()
    cov1 = a1d @ a1d.T + s2 * eye                      # X ~ N(0, I)
    cov2 = a2d @ cov1 @ a2d.T + s2 * eye
    true1 = 0.5 * (_logdet(cov1) - 2 * math.log(s2))   # 0.5 ln det(I + A S A^T / s2)
    true2 = 0.5 * (_logdet(cov2) - _logdet(s2 * (a2d @ a2d.T) + s2 * eye))
    deterministic2 = 0.5 * (_logdet(cov2) - 2 * math.log(s2))   # h(T2) - h(Z)

    net = _LinearNoisy(a1, a2, sigma)
    x = torch.randn(1500, 3, generator=g)
    y = (x[:, 0] > 0).long()
    one = noisy_network_information(net, x, y, ["n1"], n_paths=2, mc_tolerance=0.02)["n1"]
    assert one.i_xt.value == pytest.approx(true1, abs=0.08)
    x2, y2 = x[:400], y[:400]
    two = noisy_network_information(net, x2, y2, ["n2"], n_paths=16, mc_tolerance=0.02)["n2"]
    assert two.i_xt.value == pytest.approx(true2, abs=0.1)
    # the deterministic reading h(T2+Z) - h(Z) (= I(T1;T2) here) overstates I(X;T2)
    assert two.i_prev_t.value == pytest.approx(deterministic2, abs=0.1)
    assert two.i_prev_t.value > two.i_xt.value + 0.3
    assert two.details["h_t_given_x"] > two.details["h_noise"] + 0.3


def test_trained_noise_mode_and_model_stream_restored():
    x, y = _digits(150)
    model = _mlp(noise_std=0.3)
    table = ibtools.analyze([model], data=(x, y), estimators=["mixture"], max_samples=150,
                            progress=False)
    assert set(table["mode"]) == {"trained-noise"} and (table["noise_std"] == 0.3).all()
    second = table[table["layer"] == "layers.1"].iloc[0]
    assert second["i_xt"] < second["i_prev_t"] - 0.1  # h(T|X) > h(Z) past the first block
    # the noise paths leave the model's noise stream where it was
    fresh, twin = _mlp(noise_std=0.3), _mlp(noise_std=0.3)
    fresh(x[:3]), twin(x[:3])
    noisy_network_information(fresh, x, y, ["layers.0"], mc_tolerance=0.1)
    torch.testing.assert_close(fresh(x[:5]), twin(x[:5]))
    with pytest.raises(ValueError, match="second channel"):
        ibtools.analyze([model], data=(x, y), estimators=["mixture"], noise_std=0.1,
                        max_samples=150, progress=False)


def test_report_labels_modes_and_plots_noisy_tanh_info_plane_over_steps(tmp_path):
    from ibtools.models.training import train
    from ibtools.reports.plots import plot_information_plane
    from ibtools.reports.summary import summarize
    from ibtools.reports.table import prepare_table

    train("mlp", "digits", max_steps=20, checkpoint_every=20, out_dir=tmp_path / "run",
          model_config={"widths": [12, 6], "activation": "tanh", "norm": "none",
                        "noise_std": 0.2})
    checkpoints = sorted((tmp_path / "run").glob("step_*.pt"))
    noisy_rows = ibtools.analyze(checkpoints, estimators=["mixture:mc_tolerance=0.05"],
                                 max_samples=60, progress=False)
    assert sorted(noisy_rows["step"].unique()) == [0, 20]
    assert set(noisy_rows["mode"]) == {"trained-noise"}
    x, y = _digits(60)
    plain = ibtools.analyze([_mlp()], data=(x, y), estimators=["mixture"], max_samples=60,
                            progress=False)
    channel = ibtools.analyze([_mlp()], data=(x, y), estimators=["mixture"], noise_std=0.5,
                              max_samples=60, progress=False)
    mixed = prepare_table(pd.concat([noisy_rows, plain, channel], ignore_index=True))
    labels = set(mixed["setting_label"])
    assert "mixture(mc_tolerance=0.05) [noisy net]" in labels
    assert "mixture [deterministic]" in labels
    assert any(lab.endswith("[analysis noise σ=0.5]") for lab in labels)
    sentence = summarize(mixed)["sentences"][0]
    assert sentence.startswith("Which numbers mean what") and "resolution-dependent" in sentence
    assert "trained-noise rows (σ = 0.2)" in sentence
    assert any(v.endswith("noisy net σ=0.2") for v in mixed["variant"])
    # the information plane over training steps of the noisy tanh MLP, its mode in the title
    fig = plot_information_plane(noisy_rows)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert any("noisy net σ=0.2" in t for t in titles)
    assert summarize(prepare_table(plain))["sentences"][:1] != [sentence]
