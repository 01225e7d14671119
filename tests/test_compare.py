"""The shared comparison rule: Welch tests, multiplicity correction, minimum effect size."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ibtools import compare


def test_welch_matches_scipy_and_cohens_d():
    a, b = [1.0, 1.2, 0.9, 1.1], [0.5, 0.7, 0.6]
    out = compare.welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert out["p"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert out["t"] == pytest.approx(ref.statistic, rel=1e-12)
    d = (np.mean(a) - np.mean(b)) / np.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)
    assert out["cohens_d"] == pytest.approx(d, rel=1e-12)
    assert out["diff"] == pytest.approx(0.45, abs=1e-12)
    # one seed: no test
    assert np.isnan(compare.welch([1.0], [0.0, 0.1])["p"])
    # both sides without spread: exact statements
    assert compare.welch([1.0, 1.0], [0.0, 0.0])["p"] == 0.0
    assert compare.welch([1.0, 1.0], [1.0, 1.0])["p"] == 1.0


def test_holm_and_bh_against_hand_computed_values():
    p = [0.01, 0.04, 0.03, np.nan, 0.005]
    # sorted: 0.005, 0.01, 0.03, 0.04 (m=4): Holm 4*, 3*, 2*, 1* then running max
    holm = compare.adjust_pvalues(p, "holm")
    assert holm[[4, 0, 2, 1]] == pytest.approx([0.02, 0.03, 0.06, 0.06])
    assert np.isnan(holm[3])
    bh = compare.adjust_pvalues(p, "bh")  # m/rank * p, then running min from the top
    assert bh[[4, 0, 2, 1]] == pytest.approx([0.02, 0.02, 0.04, 0.04])
    with pytest.raises(ValueError, match="correction must be one of"):
        compare.adjust_pvalues(p, "bonferroni")


def _cells(rng, n_cells, shift, n_seeds=10, sd=0.01):
    return [({"cell": i}, 1.0 + shift + sd * rng.standard_normal(n_seeds),
             1.0 + sd * rng.standard_normal(n_seeds)) for i in range(n_cells)]


def test_clear_difference_is_found_and_signed():
    rng = np.random.default_rng(0)
    up = compare.compare_cells(_cells(rng, 5, +0.05))
    down = compare.compare_cells(_cells(rng, 5, -0.05))
    assert set(up["verdict"]) == {"higher"} and set(down["verdict"]) == {"lower"}
    assert (up["cohens_d"] > 2).all()


def test_no_difference_over_many_null_cells_holm_keeps_the_family():
    # 200 null cells: raw p < 0.05 in about 10 of them, Holm in (almost surely) none
    rng = np.random.default_rng(1)
    cells = _cells(rng, 200, 0.0, sd=0.05)
    raw = compare.compare_cells(cells, correction="none")
    holm = compare.compare_cells(cells, correction="holm")
    raw_hits = int(raw["verdict"].isin(["higher", "lower"]).sum())
    assert 3 <= raw_hits <= 25
    assert int(holm["verdict"].isin(["higher", "lower"]).sum()) == 0
    assert (holm["p_adj"] >= holm["p"] - 1e-15).all()


def test_holm_keeps_real_effects_among_many_nulls():
    rng = np.random.default_rng(2)
    cells = _cells(rng, 100, 0.0, sd=0.02) + [({"cell": 100 + i}, 1.2 + 0.02 * rng.standard_normal(10),
                                               1.0 + 0.02 * rng.standard_normal(10)) for i in range(4)]
    out = compare.compare_cells(cells, correction="holm")
    assert list(out.loc[out["verdict"] == "higher", "cell"]) == [100, 101, 102, 103]


def test_tiny_but_significant_difference_is_below_effect_size():
    # seeds agreeing to 1e-8 make a 1e-5 difference overwhelmingly "significant"
    rng = np.random.default_rng(3)
    cells = [({"cell": 0}, 1.00001 + 1e-8 * rng.standard_normal(3), 1.0 + 1e-8 * rng.standard_normal(3))]
    out = compare.compare_cells(cells)
    assert out["p"].iloc[0] < 1e-4 and out["verdict"].iloc[0] == "below effect size"
    assert compare.compare_cells(cells, min_effect=0)["verdict"].iloc[0] == "higher"


def test_compare_to_reference_and_summary():
    rng = np.random.default_rng(4)
    rows = []
    for variant, shift in (("base", 0.0), ("up", 0.1), ("same", 0.0)):
        for layer in ("a", "b"):
            for seed in range(8):
                rows.append({"variant": variant, "layer": layer, "seed": seed,
                             "ib_value": 1 + shift + 0.01 * rng.standard_normal()})
    table = pd.DataFrame(rows)
    out = compare.compare_to_reference(table, variant="variant", reference="base", cell=["layer"])
    assert len(out) == 4 and set(out["reference"]) == {"base"}
    assert set(out.loc[out["variant"] == "up", "verdict"]) == {"higher"}
    assert not out.loc[out["variant"] == "same", "verdict"].isin(["higher", "lower"]).any()
    counts = compare.summarize(out, by=["variant"])
    assert counts.set_index("variant").loc["up", "higher"] == 2
    assert int(compare.summarize(out)["cells"].iloc[0]) == 4
    with pytest.raises(ValueError, match="reference='nope'"):
        compare.compare_to_reference(table, variant="variant", reference="nope", cell=["layer"])
    with pytest.raises(ValueError, match="min_effect must be"):
        compare.compare_cells([], min_effect=-1)
    with pytest.raises(ValueError, match="alpha must be"):
        compare.compare_cells([], alpha=5)
