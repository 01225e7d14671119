"""Binning's label-shuffle null (issue #22 item 2): the marginal entropies are computed once,
not once per shuffle; every null value must be the plug-in MI of that shuffle, bit for bit."""

import torch

from ibtools.estimators import Binning
from ibtools.estimators.binning import plugin_mi


def test_null_values_are_the_plugin_mi_of_each_shuffle():
    gen = torch.Generator().manual_seed(4)
    x = torch.randint(0, 40, (3000,), generator=gen)
    y = (x % 5 + torch.randint(0, 2, (3000,), generator=gen)) % 6
    perms = [torch.randperm(3000, generator=gen) for _ in range(6)]
    for miller_madow in (False, True):
        est = Binning(miller_madow=miller_madow)
        got = est._null_values(None, x, y, perms)
        _, cx = torch.unique(x, return_counts=True)
        _, cy = torch.unique(y, return_counts=True)
        want = []
        for perm in perms:
            _, cxy = torch.unique(x * 6 + y[perm], return_counts=True)
            want.append(float(plugin_mi(cx, cy, cxy, 3000, miller_madow)[0]))
        assert got == want
        assert max(got) < 0.05  # shuffles: near-independence readings
