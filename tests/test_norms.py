"""IBNorm (as defined by ibtools), its flavours, swap_norms and the state-dict round trips."""

import io
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from ibtools.norms import (
    IBBatchNorm1d, IBBatchNorm2d, IBNorm, IBRMSNorm, adapt_norm_state_dict, compress,
    describe_norms, ib_norm, ib_rms_norm, swap_norms,
)
from ibtools.norms.functional import gaussian_compressed_moments

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tensors are tiny: one intra-op thread is faster, and far faster on a shared CPU.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


VARIANTS = ["S", "L", "T"]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _pair_grads(a: nn.Module, b: nn.Module, x: torch.Tensor):
    """Outputs and gradients (input and parameters) of two modules on the same input."""
    out = []
    for m in (a, b):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        # A fixed random projection, so every output element gets a distinct gradient.
        (y * torch.linspace(-1, 2, y.numel()).view_as(y)).sum().backward()
        out.append((y.detach(), xi.grad, [p.grad for p in m.parameters()]))
    return out


# ------------------------------------------------------------------ lam = 0 is the baseline


@pytest.mark.parametrize("variant", VARIANTS)
def test_lam_zero_equals_layer_norm_outputs_and_gradients(variant):
    x = torch.randn(4, 6, 16, generator=_gen(1)) * 3 + 2
    base, ib = nn.LayerNorm(16), IBNorm(16, lam=0.0, variant=variant)
    with torch.no_grad():
        base.weight.copy_(torch.randn(16, generator=_gen(2)))
        base.bias.copy_(torch.randn(16, generator=_gen(3)))
    ib.load_state_dict(base.state_dict())
    (yb, gb, pb), (yi, gi, pi) = _pair_grads(base, ib, x)
    assert_close(yi, yb, rtol=0, atol=0)
    assert_close(gi, gb, rtol=0, atol=0)
    for a, b in zip(pi, pb):
        assert_close(a, b, rtol=0, atol=0)


def test_lam_zero_equals_rms_norm_outputs_and_gradients():
    x = torch.randn(3, 5, 12, generator=_gen(4)) * 2 + 1
    base, ib = nn.RMSNorm(12), IBRMSNorm(12, lam=0.0)
    with torch.no_grad():
        base.weight.copy_(torch.rand(12, generator=_gen(5)) + 0.5)
    ib.load_state_dict(base.state_dict())
    (yb, gb, pb), (yi, gi, pi) = _pair_grads(base, ib, x)
    assert_close(yi, yb, rtol=0, atol=0)
    assert_close(gi, gb, rtol=0, atol=0)
    assert_close(pi[0], pb[0], rtol=0, atol=0)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_lam_zero_equals_batch_norm2d_in_train_and_eval(momentum):
    x = torch.randn(8, 3, 5, 5, generator=_gen(6)) * 4 - 1
    base, ib = nn.BatchNorm2d(3, momentum=momentum), IBBatchNorm2d(3, momentum=momentum, lam=0.0)
    (yb, gb, pb), (yi, gi, pi) = _pair_grads(base, ib, x)
    assert_close(yi, yb, rtol=0, atol=0)
    assert_close(gi, gb, rtol=0, atol=0)
    for a, b in zip(pi, pb):
        assert_close(a, b, rtol=0, atol=0)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert_close(getattr(ib, name), getattr(base, name), rtol=0, atol=0)
    base.eval(), ib.eval()
    assert_close(ib(x[:3]), base(x[:3]), rtol=0, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_small_lam_approaches_baseline_through_the_formula(variant):
    # lam = 1e-6 goes through compress + re-standardize, not the lam = 0 shortcut: the
    # result must still be LayerNorm / RMSNorm up to O(lam) + O(eps) terms.
    x = torch.randn(4, 32, generator=_gen(7), dtype=torch.float64)
    assert_close(ib_norm(x, 32, lam=1e-6, variant=variant), nn.functional.layer_norm(x, (32,)),
                 rtol=0, atol=1e-4)
    assert_close(ib_rms_norm(x, 32, eps=1e-6, lam=1e-6, variant=variant),
                 nn.functional.rms_norm(x, (32,), eps=1e-6), rtol=0, atol=1e-4)


# ------------------------------------------------------------------ statistics before affine


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("lam", [0.5, 2.0, 8.0])
def test_group_statistics_are_standardized(variant, lam):
    x = torch.randn(64, 48, generator=_gen(8), dtype=torch.float64) * 5 + 3
    x[:, :4] += 20  # skewed groups, so compression actually moves the mean of c
    y = IBNorm(48, elementwise_affine=False, lam=lam, variant=variant, dtype=torch.float64)(x)
    assert_close(y.mean(-1), torch.zeros(64, dtype=torch.float64), rtol=0, atol=1e-12)
    # Exactly var(c) / (var(c) + eps), as for LayerNorm; within 1e-3 of 1 for these lam.
    var_c = compress(nn.functional.layer_norm(x, (48,)), lam, variant).var(-1, unbiased=False)
    assert_close(y.var(-1, unbiased=False), var_c / (var_c + 1e-5), rtol=0, atol=1e-12)
    assert float((y.var(-1, unbiased=False) - 1).abs().max()) < 2e-3  # eps / var(c), var(c) > 0.005

    r = IBRMSNorm(48, eps=1e-8, elementwise_affine=False, lam=lam, variant=variant, dtype=torch.float64)(x)
    ms_c = compress(nn.functional.rms_norm(x, (48,), eps=1e-8), lam, variant).pow(2).mean(-1)
    assert_close(r.pow(2).mean(-1), ms_c / (ms_c + 1e-8), rtol=0, atol=1e-12)
    assert float((r.pow(2).mean(-1) - 1).abs().max()) < 1e-5

    bn = IBBatchNorm1d(6, affine=False, lam=lam, variant=variant, dtype=torch.float64)
    z = bn(x.view(64, 6, 8))
    assert_close(z.mean((0, 2)), torch.zeros(6, dtype=torch.float64), rtol=0, atol=1e-12)
    xb = x.view(64, 6, 8)
    ub = (xb - xb.mean((0, 2), keepdim=True)) / torch.sqrt(xb.var((0, 2), unbiased=False, keepdim=True) + 1e-5)
    var_cb = compress(ub, lam, variant).var((0, 2), unbiased=False)
    assert_close(z.var((0, 2), unbiased=False), var_cb / (var_cb + 1e-5), rtol=0, atol=1e-12)
    assert float((z.var((0, 2), unbiased=False) - 1).abs().max()) < 2e-3


# ------------------------------------------------------------------ the compression phi


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("lam", [1e-3, 0.3, 1.0, 4.0, 50.0])
def test_phi_is_bounded_monotone_odd_with_unit_slope(variant, lam):
    u = torch.linspace(-60, 60, 24001, dtype=torch.float64)
    c = compress(u, lam, variant)
    assert bool((c.abs() <= u.abs() + 1e-12).all())
    assert bool((c.diff() >= 0).all())
    assert_close(compress(-u, lam, variant), -c, rtol=0, atol=1e-12)
    zero = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(compress(zero, lam, variant).sum(), zero)
    assert g.item() == pytest.approx(1.0, abs=1e-12)


def test_phi_closed_form_values():
    u = torch.tensor([2.0, -0.5], dtype=torch.float64)
    assert_close(compress(u, 1.5, "S"), torch.tensor([2 / 4.0, -0.5 / 1.75], dtype=torch.float64))
    assert_close(compress(u, 1.5, "L"), torch.tensor([math.log(4.0) / 1.5, -math.log(1.75) / 1.5],
                                                     dtype=torch.float64))
    assert_close(compress(u, 1.5, "T"), torch.tanh(1.5 * u) / 1.5)
    assert_close(compress(u, 0.0, "T"), u, rtol=0, atol=0)


def test_custom_phi_callable_is_used():
    def phi(u, lam):
        return u / torch.sqrt(1 + lam * u * u)

    x = torch.randn(5, 10, generator=_gen(9), dtype=torch.float64)
    u = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    expected = phi(u, 3.0)
    expected = (expected - expected.mean(-1, keepdim=True)) / torch.sqrt(
        expected.var(-1, unbiased=False, keepdim=True) + 1e-5)
    assert_close(ib_norm(x, 10, lam=3.0, variant=phi), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="variant callable must return"):
        ib_norm(x, 10, lam=1.0, variant=lambda u, lam: u.sum())


def test_gaussian_compressed_moments_match_monte_carlo():
    z = torch.randn(400_000, generator=_gen(10), dtype=torch.float64)
    for variant, lam in [("T", 1.0), ("S", 2.0), ("L", 0.7)]:
        mean, var = gaussian_compressed_moments(lam, variant)
        assert mean == pytest.approx(0.0, abs=1e-12)  # phi is odd
        # MC standard error of var(phi(Z)) is below 2e-3 at this n.
        assert var == pytest.approx(compress(z, lam, variant).var().item(), abs=4e-3)
    assert gaussian_compressed_moments(0.0) == pytest.approx((0.0, 1.0), abs=1e-12)


# ------------------------------------------------------------------ order ablation


@pytest.mark.parametrize("variant", VARIANTS)
def test_standardize_first_is_compress_without_restandardization(variant):
    x = torch.randn(2000, 32, generator=_gen(11), dtype=torch.float64)
    w, b = torch.rand(32, dtype=torch.float64) + 0.5, torch.randn(32, dtype=torch.float64)
    u = nn.functional.layer_norm(x, (32,))
    ablation = ib_norm(x, 32, w, b, lam=1.0, variant=variant, order="standardize_first")
    assert_close(ablation, compress(u, 1.0, variant) * w + b, rtol=0, atol=1e-12)
    default = ib_norm(x, 32, w, b, lam=1.0, variant=variant)
    assert (ablation - default).abs().max() > 0.1
    # Without re-standardization the spread shrinks to about Var[phi(Z)] < 1 (Gaussian input).
    pre = ib_norm(x, 32, lam=1.0, variant=variant, order="standardize_first")
    assert pre.var().item() == pytest.approx(gaussian_compressed_moments(1.0, variant)[1], abs=0.02)
    assert pre.var().item() < 0.9


# ------------------------------------------------------------------ state dicts


def test_baseline_state_dict_loads_into_ibnorm_and_back():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 4), nn.BatchNorm1d(4))
    with torch.no_grad():
        base[1].weight.uniform_(0.5, 1.5)
        base[3].running_var.fill_(2.0)
    ib = nn.Sequential(nn.Linear(8, 8), IBNorm(8, lam=2.0), nn.Linear(8, 4), IBBatchNorm1d(4, lam=2.0))
    result = ib.load_state_dict(base.state_dict(), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert_close(ib[1].weight, base[1].weight)
    assert_close(ib[3].running_var, base[3].running_var)
    assert ib[1].lam == 2.0  # a baseline checkpoint leaves the module's lam alone

    sd = ib.state_dict()
    assert sd["1.lam"].dtype == torch.float64 and sd["1.lam"].item() == 2.0
    with pytest.raises(RuntimeError, match="Unexpected key"):
        nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 4), nn.BatchNorm1d(4)).load_state_dict(sd)
    back = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 4), nn.BatchNorm1d(4))
    back.load_state_dict(adapt_norm_state_dict(back, sd), strict=True)
    assert_close(back[1].weight, base[1].weight)
    assert "1.lam" in sd  # adapt returned a copy


def test_lam_travels_with_the_state_dict():
    src, dst = IBNorm(6, lam=0.25, variant="S"), IBNorm(6, lam=3.0, variant="S")
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst.load_state_dict(torch.load(buf, weights_only=True))
    assert dst.lam == 0.25
    x = torch.randn(3, 6, generator=_gen(12))
    assert_close(dst(x), src(x))
    bad = src.state_dict()
    bad["lam"] = torch.tensor(-1.0, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="lam must be a finite number >= 0"):
        dst.load_state_dict(bad)


# ------------------------------------------------------------------ BatchNorm flavour


def test_ib_batch_norm_train_versus_eval():
    bn = IBBatchNorm2d(3, lam=1.5, variant="T")
    x = torch.randn(16, 3, 4, 4, generator=_gen(13)) * 2 + 5
    y = bn(x)
    # One update from (0, 1): mean -> momentum * batch mean, var -> 0.9 + 0.1 * unbiased var.
    assert_close(bn.running_mean, 0.1 * x.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert_close(bn.running_var, 0.9 + 0.1 * x.var((0, 2, 3), unbiased=True), rtol=1e-5, atol=1e-6)
    # Training: batch statistics, so a sample's output depends on the rest of the batch.
    assert (bn(x[:4])[:4] - y[:4]).abs().max() > 1e-2
    assert int(bn.num_batches_tracked) == 2
    bn.eval()
    frozen = {k: v.clone() for k, v in bn.state_dict().items()}
    y_eval = bn(x)
    assert_close(bn(x[:4]), y_eval[:4], rtol=0, atol=0)  # eval: per-sample, batch independent
    for k, v in bn.state_dict().items():
        assert_close(v, frozen[k], rtol=0, atol=0)  # eval updates nothing


def test_ib_batch_norm_eval_uses_running_compressed_statistics():
    # After many training batches from one distribution, eval output ~ train output.
    bn = IBBatchNorm1d(4, lam=2.0, variant="S", momentum=None)
    g = _gen(14)
    for _ in range(30):
        bn(torch.randn(256, 4, generator=g) * 3 + 1)
    x = torch.randn(4096, 4, generator=g) * 3 + 1
    y_train = bn(x)
    bn.eval()
    assert_close(bn(x), y_train, rtol=0, atol=0.05)


def test_ib_batch_norm_rejects_single_value_per_channel():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        IBBatchNorm1d(3, lam=1.0)(torch.randn(1, 3))


# ------------------------------------------------------------------ numerics


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("variant", VARIANTS)
def test_half_inputs_are_computed_in_float32(dtype, variant):
    x = torch.randn(4, 7, 64, generator=_gen(15)) * 10
    ref = IBNorm(64, lam=1.0, variant=variant)(x)
    out = IBNorm(64, lam=1.0, variant=variant).to(dtype)(x.to(dtype))
    assert out.dtype == dtype
    tol = 2e-2 if dtype == torch.float16 else 8e-2  # one rounding of the output (and input)
    assert_close(out.float(), ref, rtol=0, atol=tol)
    rms = IBRMSNorm(64, lam=1.0, variant=variant).to(dtype)(x.to(dtype))
    assert rms.dtype == dtype and bool(torch.isfinite(rms).all())


@pytest.mark.parametrize("variant", VARIANTS)
def test_constant_and_extreme_inputs_give_finite_values_and_gradients(variant):
    for scale in (0.0, 1e-6, 1e4):
        for layer in (IBNorm(16, lam=2.0, variant=variant), IBRMSNorm(16, lam=2.0, variant=variant),
                      IBBatchNorm1d(16, lam=2.0, variant=variant)):
            x = (torch.full((4, 16), 3.0) if scale == 0 else torch.randn(4, 16, generator=_gen(16)) * scale)
            x.requires_grad_(True)
            y = layer(x)
            y.square().sum().backward()
            assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(x.grad).all())
            if scale == 0 and not isinstance(layer, IBRMSNorm):
                assert_close(y.detach(), torch.zeros_like(y).add(layer.bias.detach()), rtol=0, atol=1e-3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_float64(variant):
    x = torch.randn(3, 5, generator=_gen(17), dtype=torch.float64, requires_grad=True)
    w = torch.rand(5, generator=_gen(18), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ib_norm(a, 5, b, None, lam=1.3, variant=variant), (x, w))
    assert torch.autograd.gradcheck(lambda a: ib_rms_norm(a, 5, lam=0.7, variant=variant), (x,))


# ------------------------------------------------------------------ bad arguments


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match=r"lam must be a finite number >= 0.*-0\.5"):
        IBNorm(4, lam=-0.5)
    with pytest.raises(ValueError, match="lam must be"):
        IBNorm(4, lam=float("nan"))
    with pytest.raises(TypeError, match="lam must be a real number"):
        IBNorm(4, lam=True)
    with pytest.raises(ValueError, match=r"variant must be one of \('S', 'L', 'T'\).*'Q'"):
        IBRMSNorm(4, variant="Q")
    with pytest.raises(ValueError, match="order must be one of.*'backwards'"):
        IBBatchNorm2d(4, order="backwards")
    with pytest.raises(ValueError, match=r"normalized_shape \[4\] must match.*\[2, 5\]"):
        IBNorm(4)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="expected 4D input"):
        IBBatchNorm2d(4)(torch.randn(2, 4))
    m = IBNorm(4)
    with pytest.raises(ValueError, match="lam must be"):
        m.lam = -1
    with pytest.raises(ValueError, match="to must be one of"):
        swap_norms(nn.Sequential(nn.LayerNorm(3)), to="group")
    with pytest.raises(ValueError, match="variant is only used with"):
        swap_norms(nn.Sequential(nn.LayerNorm(3)), to="layer", variant="S")
    with pytest.raises(ValueError, match="itself a normalization layer"):
        swap_norms(nn.LayerNorm(3))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        swap_norms("model")


# ------------------------------------------------------------------ swap_norms


class _Nested(nn.Module):
    def __init__(self):
        super().__init__()
        shared = nn.LayerNorm(8)
        self.pre = shared
        self.inner = nn.Sequential(nn.Linear(8, 8), shared, nn.ModuleDict({"rms": nn.RMSNorm(8)}))
        self.conv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2))
        self.group = nn.GroupNorm(1, 2)

    def forward(self, x, img):
        h = self.inner[2]["rms"](self.inner[1](self.inner[0](self.pre(x))))
        return h, self.group(self.conv(img))


def test_swap_norms_nested_shared_and_back():
    torch.manual_seed(0)
    model = _Nested()
    with torch.no_grad():
        model.pre.weight.uniform_(0.5, 2.0)
    x, img = torch.randn(5, 8), torch.randn(4, 1, 6, 6)
    model.train()
    ref = model(x, img)
    weight = model.pre.weight

    record = swap_norms(model, to="ib-L", lam=0.0)
    assert {r["from"]: r["to"] for r in record} == {
        "LayerNorm": "IBNorm", "RMSNorm": "IBRMSNorm", "BatchNorm2d": "IBBatchNorm2d"}
    shared_entry = next(r for r in record if r["from"] == "LayerNorm")
    assert sorted(shared_entry["names"]) == ["inner.1", "pre"]
    assert isinstance(model.pre, IBNorm) and model.pre is model.inner[1]  # still shared
    assert model.pre.weight is weight  # same Parameter object
    assert isinstance(model.group, nn.GroupNorm)  # not in scope, left alone
    assert describe_norms(model) == {"norm": "ib-L", "lam": 0.0}
    out = model(x, img)
    for a, b in zip(out, ref):
        assert_close(a, b, rtol=0, atol=0)  # lam = 0 is the baseline exactly

    swap_norms(model, to="ib-T", lam=1.0)
    assert describe_norms(model) == {"norm": "ib-T", "lam": 1.0}
    assert (model(x, img)[0] - ref[0]).abs().max() > 1e-3

    back = swap_norms(model, to="baseline")
    assert len(back) == 3
    assert type(model.pre) is nn.LayerNorm and model.pre is model.inner[1]
    assert type(model.inner[2]["rms"]) is nn.RMSNorm and type(model.conv[1]) is nn.BatchNorm2d
    assert describe_norms(model) == {"norm": "mixed", "lam": None}
    assert_close(model(x, img)[0], ref[0], rtol=0, atol=0)


def test_swap_back_by_family_only_touches_that_family():
    model = nn.Sequential(nn.LayerNorm(4), nn.RMSNorm(4))
    swap_norms(model, to="ib-S", lam=0.5)
    swap_norms(model, to="rms")
    assert type(model[0]) is IBNorm and type(model[1]) is nn.RMSNorm
    assert describe_norms(model) == {"norm": "mixed", "lam": 0.5}
    assert describe_norms(nn.Sequential(nn.Linear(2, 2))) == {"norm": "none", "lam": None}


def _tiny_gpt2():
    tr = pytest.importorskip("transformers", reason="transformers not installed")
    cfg = tr.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return tr.GPT2Model(cfg).eval()


def _tiny_llama():
    tr = pytest.importorskip("transformers", reason="transformers not installed")
    cfg = tr.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    return tr.LlamaModel(cfg).eval()


def test_swap_norms_hugging_face_gpt2():
    torch.manual_seed(0)
    model = _tiny_gpt2()
    ids = torch.randint(0, 64, (2, 10), generator=_gen(19))
    ref = model(ids).last_hidden_state
    record = swap_norms(model, to="ib-T", lam=0.0)
    assert len(record) == 2 * 2 + 1  # ln_1, ln_2 per block and ln_f
    assert isinstance(model.h[0].ln_1, IBNorm) and isinstance(model.ln_f, IBNorm)
    assert_close(model(ids).last_hidden_state, ref, rtol=0, atol=0)
    swap_norms(model, to="ib-T", lam=2.0)
    assert (model(ids).last_hidden_state - ref).abs().max() > 1e-3
    swap_norms(model, to="layer")
    assert type(model.ln_f) is nn.LayerNorm
    assert_close(model(ids).last_hidden_state, ref, rtol=0, atol=0)


def test_swap_norms_hugging_face_llama():
    torch.manual_seed(0)
    model = _tiny_llama()
    ids = torch.randint(0, 64, (2, 10), generator=_gen(20))
    ref = model(ids).last_hidden_state
    assert describe_norms(model) == {"norm": "rms", "lam": None}
    record = swap_norms(model, to="ib-S", lam=0.0)
    assert {r["from"] for r in record} == {"LlamaRMSNorm"} and len(record) == 2 * 2 + 1
    assert model.norm.eps == model.config.rms_norm_eps
    # F.rms_norm vs LLaMA's explicit formula: equal up to float32 rounding.
    assert_close(model(ids).last_hidden_state, ref, rtol=1e-5, atol=1e-5)
    swap_norms(model, to="ib-S", lam=1.0)
    assert (model(ids).last_hidden_state - ref).abs().max() > 1e-3
    swap_norms(model, to="rms")
    assert type(model.norm) is nn.RMSNorm
    assert_close(model(ids).last_hidden_state, ref, rtol=1e-5, atol=1e-5)


def test_swap_preserves_dtype_device_and_mode():
    model = nn.Sequential(nn.BatchNorm1d(3).double().eval())
    swap_norms(model, to="ib-T", lam=1.0)
    assert model[0].weight.dtype == torch.float64 and not model[0].training
    assert np.isclose(model[0].running_compressed_var[0].item(), gaussian_compressed_moments(1.0)[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_matches_cpu(variant):
    x = torch.randn(8, 4, 6, 6, generator=_gen(21)) * 3 + 1
    makers = (lambda: IBNorm(6, lam=1.5, variant=variant), lambda: IBRMSNorm(6, eps=1e-6, lam=1.5, variant=variant),
              lambda: IBBatchNorm2d(4, lam=1.5, variant=variant))
    for make in makers:
        cpu, gpu = make(), make().cuda()
        y = gpu(x.cuda())
        assert y.device.type == "cuda"
        assert_close(y.cpu(), cpu(x), rtol=1e-4, atol=1e-5)
        for name, buf in cpu.named_buffers():
            assert_close(dict(gpu.named_buffers())[name].cpu(), buf, rtol=1e-4, atol=1e-5)
        # bf16 in, float32 inside: only the output's own rounding (2^-8 relative) may differ
        # from a float32 run on the same (rounded) input.  (RMS eps is explicit: eps=None
        # means finfo(input dtype).eps, 0.0078 for bf16, as in nn.RMSNorm.)
        x16 = x.bfloat16()
        half = gpu.to(torch.bfloat16)(x16.cuda())
        assert half.dtype == torch.bfloat16
        assert_close(half.float().cpu(), make()(x16.float()), rtol=8e-3, atol=1e-3)
