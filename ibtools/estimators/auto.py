"""``method="auto"``: pick the estimator from what is known of each one's bias.

The default of :func:`ibtools.mutual_information`, :func:`ibtools.entropy` and
``ibtools estimate``.  The policy is a fixed rule on the kinds of the two variables and on
two cheap estimates, never a table of known cases:

* both discrete: the plug-in MI of the class histograms with the Miller-Madow correction
  (``binning``), whose upward bias ``(K_x - 1)(K_y - 1) / (2n)`` at independence the
  correction removes;
* one discrete: Ross's (2014) mixed KSG on the continuous side's normal scores;
* both continuous: the larger of two estimates that read low, not high, where they are
  wrong -- the Gaussian-copula MI (``gaussian`` on normal scores) and KSG on the same
  normal scores.  See :class:`Auto` for why the larger one is kept.
"""

from __future__ import annotations

import torch

from ibtools.estimators.base import Estimator, check_int
from ibtools.estimators.binning import Binning
from ibtools.estimators.gaussian import Gaussian
from ibtools.estimators.ksg import KSG
from ibtools.estimators.transforms import copula

#: Candidates further apart than this (nats) make the choice matter: a flag says which won.
CHOICE_MATTERS = 0.05

GAUSSIAN_COPULA = "gaussian:transform=copula"
KSG_COPULA = "ksg:transform=copula"
MIXED_KSG = "ksg(ross):transform=copula"
PLUGIN = "binning:miller_madow=True"
KL_ENTROPY = "ksg (Kozachenko-Leonenko)"

_WHY_GAUSSIAN = ("KSG reads low when the dimension or the MI is high (its kNN balls span "
                 "regions where the density changes), while the Gaussian-copula value is exact "
                 "whenever the dependence is Gaussian once each column's marginal is made "
                 "normal")
_WHY_KSG = ("the Gaussian-copula value sees only the dependence a Gaussian copula can carry "
            "(it misses heavy-tailed, non-monotone or curved dependence, e.g. Student-t or "
            "spirals), so it reads lower; KSG sees any dependence")


class Auto(Estimator):
    """Mutual information and entropy with the estimator chosen from the data's kinds.

    Policy for I(X;Y):

    * **X and Y continuous**: both sides are mapped column by column to normal scores
      (ranks, :func:`~ibtools.estimators.transforms.copula`), which changes no MI, and two
      estimates are made on them: the Gaussian-copula MI (:class:`Gaussian`, with its
      finite-sample bias correction) and KSG.  The larger is reported.  Both read low where
      they fail, not high: KSG is biased toward 0 as the dimension and the MI grow
      (Kraskov et al. 2004; 25 % low on a 5+5-d Gaussian pair of 1 nat at n = 10 000, 85 %
      low at 25+25 d), and the Gaussian-copula MI is a lower bound on the MI for
      one-dimensional X and Y under any copula (Ince et al. 2017) and exact under a Gaussian
      copula, whatever the marginals; for several dimensions the bound needs each side to be
      jointly Gaussian after the marginal maps, so it can also read far below (Student-t
      dependence reads 0).  The larger of two estimates that err downward is the nearer
      one; its only upward error is the sampling noise of the larger of two values.
    * **one discrete** (class or token ids): Ross's mixed KSG (:class:`KSG` with a discrete
      Y) on the continuous side's normal scores.  The Gaussian class-conditional estimate is
      not used: for Gaussian classes it over-reads h(T) of the mixture and so reads high.
    * **both discrete**: the plug-in MI (:class:`Binning` on the class ids) with the
      Miller-Madow correction, which removes its (K_x - 1)(K_y - 1) / (2n) upward bias at
      independence.

    Entropy H(X): Kozachenko-Leonenko (``ksg``) for continuous X, with no marginal map
    (entropy is not invariant under one); the plug-in with Miller-Madow for discrete X.

    The result's ``method`` is ``"auto"``; ``details["auto"]`` names the estimator used
    (``"chosen"``), every candidate's value, the reason, and each candidate's own details
    and flags.  The chosen estimator's details are also at the top level of ``details``,
    and its flags are the result's; when continuous candidates differ by more than
    ``CHOICE_MATTERS`` nats, one flag line says which was used and why.

    Parameters
    ----------
    k : int, default 3
        Neighbour order of every KSG estimate (MI and entropy).  A smaller k reads less low
        where KSG is biased (k = 1 reads 0.02-0.09 nat higher than k = 3 on BMI's Student-t
        5+5 and spiral tasks at n = 10 000) but is noisier: at independence with n = 500
        its spread about doubles (sd 0.036 against 0.019 nat, 1+1 d), and the larger-of-two
        rule turns spread into upward bias.  3 balances the two.
    ksg_max_samples : int or None, default 100000
        The KSG candidate runs on a seeded random subset of this many rows when n is larger
        (flagged), so that the default stays affordable on large inputs (brute-force KSG is
        O(n^2 d)); a smaller n only biases KSG further down, which the larger-of-two rule
        tolerates.  ``None`` uses every row.  The Gaussian and plug-in estimates always use
        every row.
    **common
        seed, device, dtype, memory_budget, ci ("subsample": the whole policy, choice
        included, rerun on half-size subsets), n_resamples, confidence, n_permutations (see
        :class:`~ibtools.estimators.base.Estimator`).

    Notes
    -----
    Measured on the 40 tasks of the BMI benchmark (Czyz et al. 2023) at n = 10 000 by
    ``benchmarks/bmi_tasks.py`` (results in ``benchmarks/BMI.md``).  What no policy here
    fixes: KSG's collapse on non-Gaussian dependence in many dimensions (Student-t 5+5,
    spirals), where every candidate reads low.  Cost: about the sum of one Gaussian fit and
    one KSG run.  The interval, if asked, is the spread of the whole policy over subsets.

    References
    ----------
    A. Kraskov, H. Stoegbauer, P. Grassberger, "Estimating mutual information",
    Phys. Rev. E 69, 066138 (2004).
    R. A. Ince et al., "A statistical framework for neuroimaging data analysis based on
    mutual information estimated via a Gaussian copula", Human Brain Mapping 38 (2017).
    B. C. Ross, "Mutual information between discrete and continuous data sets",
    PLoS ONE 9(2): e87357 (2014).
    G. A. Miller, "Note on the bias of information estimates", in Information Theory in
    Psychology (1955).
    P. Czyz et al., "Beyond normal: on the evaluation of mutual information estimators",
    NeurIPS (2023).
    """

    name = "auto"
    limitations = (
        "Chooses KSG, the Gaussian copula or the plug-in from the variables' kinds (the larger "
        "of KSG and the Gaussian-copula MI for two continuous variables): it carries the "
        "limitations of the estimator used, which details['auto'] names.")
    defaults = {"k": 3, "ksg_max_samples": 100_000}
    interval_kinds = ("subsample",)
    supports_transform = False
    handles_discrete_x = True
    handles_entropy_of_discrete = True
    stochastic = True

    def _check_settings(self) -> None:
        check_int(self.k, "k", minimum=1)
        if self.ksg_max_samples is not None:
            check_int(self.ksg_max_samples, "ksg_max_samples", minimum=int(self.k) + 2)

    def _min_samples(self) -> int:
        return int(self.k) + 1

    # -- the component estimators --------------------------------------------------------

    def _common(self) -> dict:
        return {"seed": self.seed, "device": self.device, "dtype": self.dtype,
                "memory_budget": self.memory_budget}

    def _component(self, cls, **settings):
        est = cls(**self._common(), **settings)
        # messages of the component must name the argument the caller passed
        est._swapped_arguments = getattr(self, "_swapped_arguments", False)
        return est

    def _ksg_rows(self, n: int, rng: torch.Generator, device):
        """Row indices for the KSG candidate, or ``None`` for every row."""
        cap = self.ksg_max_samples
        if cap is None or n <= cap:
            return None
        g = torch.Generator(device="cpu")
        g.manual_seed(int(torch.randint(0, 2**62, (1,), generator=rng, device=rng.device)))
        return torch.randperm(n, generator=g)[:cap].to(device)

    # -- mutual information ---------------------------------------------------------------

    def _mi(self, x, y, x_discrete, y_discrete, rng):
        if x_discrete and y_discrete:
            value, details, flags = self._component(Binning, miller_madow=True)._mi(
                x, y, True, True, rng)
            why = ("both variables are discrete: plug-in MI of the class histograms, with the "
                   "Miller-Madow correction of its upward bias")
            return value, self._report(PLUGIN, {PLUGIN: (value, details, flags)}, why), flags
        if y_discrete:
            value, details, flags = self._component(KSG, k=int(self.k))._mi(
                copula(x), y, False, True, rng)
            why = ("one variable is discrete: Ross's (2014) mixed KSG on the continuous "
                   "side's normal scores")
            return value, self._report(MIXED_KSG, {MIXED_KSG: (value, details, flags)}, why), \
                flags
        return self._mi_continuous(x, y, rng)

    def _mi_continuous(self, x, y, rng):
        n = int(x.shape[0])
        xc, yc = copula(x), copula(y)
        found = {GAUSSIAN_COPULA: self._component(Gaussian)._mi(xc, yc, False, False, rng)}
        rows = self._ksg_rows(n, rng, x.device)
        ksg_x, ksg_y = (xc, yc) if rows is None else (copula(x[rows]), copula(y[rows]))
        found[KSG_COPULA] = self._component(KSG, k=int(self.k))._mi(ksg_x, ksg_y, False, False,
                                                                     rng)
        if rows is not None:
            found[KSG_COPULA][1]["rows_used"] = int(rows.numel())
        g_value, k_value = found[GAUSSIAN_COPULA][0], found[KSG_COPULA][0]
        chosen = GAUSSIAN_COPULA if g_value >= k_value else KSG_COPULA
        value, _, chosen_flags = found[chosen]
        why = ("both variables are continuous: the larger of the Gaussian-copula and KSG "
               "estimates on normal scores, both of which read low where they fail; "
               + (_WHY_GAUSSIAN if chosen == GAUSSIAN_COPULA else _WHY_KSG))
        flags = list(chosen_flags)
        if chosen == GAUSSIAN_COPULA:  # KSG's "reads low in high dimension" is moot now
            flags = [f for f in flags if "biased toward 0" not in f]
        if abs(g_value - k_value) > CHOICE_MATTERS:
            other = KSG_COPULA if chosen == GAUSSIAN_COPULA else GAUSSIAN_COPULA
            flags.insert(0, f"auto used {chosen} = {value:.4f} nats, not {other} = "
                            f"{found[other][0]:.4f}: {why.split('; ', 1)[1]}")
        if rows is not None:
            flags.append(f"the KSG candidate ran on {int(rows.numel())} of the n={n} rows "
                         f"(ksg_max_samples={self.ksg_max_samples}); set ksg_max_samples=None "
                         f"to use every row")
        return value, self._report(chosen, found, why), flags

    # -- entropy --------------------------------------------------------------------------

    def _entropy(self, x, discrete, rng):
        if discrete:
            value, details, flags = self._component(Binning, miller_madow=True)._entropy(
                x, True, rng)
            why = "x is discrete: plug-in entropy with the Miller-Madow correction"
            return value, self._report(PLUGIN, {PLUGIN: (value, details, flags)}, why), flags
        value, details, flags = self._component(KSG, k=int(self.k))._entropy(x, False, rng)
        why = ("x is continuous: the Kozachenko-Leonenko kNN entropy, on the data as given "
               "(differential entropy changes under marginal maps, so no normal scores)")
        return value, self._report(KL_ENTROPY, {KL_ENTROPY: (value, details, flags)}, why), \
            flags

    # -- the report -----------------------------------------------------------------------

    @staticmethod
    def _report(chosen: str, found: dict, why: str) -> dict:
        """The chosen candidate's details at the top level, and ``details["auto"]``."""
        details = dict(found[chosen][1])
        details["auto"] = {
            "chosen": chosen,
            "reason": why,
            "candidates": {name: float(v) for name, (v, _, _) in found.items()},
            "candidate_details": {name: d for name, (_, d, _) in found.items()},
            "candidate_flags": {name: list(f) for name, (_, _, f) in found.items()},
        }
        return details
