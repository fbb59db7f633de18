"""LARS, LAMB and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_lessmore.ssl.optim import LAMB, LARS, param_groups_exclude_bias_and_norm, warmup_cosine_schedule


def test_schedule_honours_start_and_final_lr():
    s = warmup_cosine_schedule(base_lr=0.15, final_lr=0.00015, start_lr=0.01, epochs=20, warmup_epochs=10, iters_per_epoch=5)
    assert s.shape == (100,)
    assert s[0] == pytest.approx(0.01)  # the authors' code ignored start_lr
    assert s[49] == pytest.approx(0.15)
    assert s[50] == pytest.approx(0.15)
    assert s[-1] == pytest.approx(0.00015 + 0.5 * (0.15 - 0.00015) * (1 + math.cos(math.pi * 49 / 50)))
    assert np.all(np.diff(s[50:]) <= 0)
    assert s[-1] < 0.001  # decays toward final_lr, not 0


def test_schedule_errors():
    with pytest.raises(ValueError, match="warmup_epochs"):
        warmup_cosine_schedule(base_lr=1, final_lr=0, epochs=2, warmup_epochs=3, iters_per_epoch=1)


def test_lars_step_by_hand():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # |w| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=0.1, momentum=0.9, weight_decay=0.01, trust_coefficient=0.001)
    w.grad = torch.tensor([[0.0, 2.0]])  # |g| = 2
    b.grad = torch.tensor([0.5])
    opt.step()
    trust = 0.001 * 5 / (2 + 0.01 * 5 + 1e-8)
    expected_w = torch.tensor([[3.0, 4.0]]) - 0.1 * trust * (torch.tensor([[0.0, 2.0]]) + 0.01 * torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(w.data, expected_w)
    torch.testing.assert_close(b.data, torch.tensor([1.0 - 0.1 * 0.5]))  # bias: plain SGD, no decay, no adaptation


def test_param_groups_split():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    g = param_groups_exclude_bias_and_norm(net, 1e-6)
    assert len(g[0]["params"]) == 1 and len(g[1]["params"]) == 3 and g[1]["weight_decay"] == 0


def test_spark_mask_tokens_get_no_weight_decay_as_sparks_nowd_keys():
    """SparK's get_param_groups(nowd_keys={'mask_token', ...}): the decoder's (1, C, 1, 1) mask tokens join the
    bias/norm group; every other 4-D weight is decayed."""
    from monai_lessmore.ssl.spark import SparKModel

    model = SparKModel(decoder_width=32)
    decay, no_decay = param_groups_exclude_bias_and_norm(model, 0.04, no_decay_keys=["mask_token"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"] if p.ndim > 1} == {
        n for n, p in model.named_parameters() if "mask_token" in n}
    assert len(model.decoder.mask_tokens) == 4 and not any("mask_token" in names[id(p)] for p in decay["params"])
    assert no_decay["exclude_from_adaptation"] and decay["weight_decay"] == 0.04
    plain = param_groups_exclude_bias_and_norm(model, 0.04)
    assert len(plain[0]["params"]) == len(decay["params"]) + len(model.decoder.mask_tokens)


def test_lamb_step_by_hand():
    """One LAMB step (You et al. 2019, Algorithm 2) computed by hand."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 2.0]))  # |w| = 3
    opt = LAMB([w], lr=0.1, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1)
    g = torch.tensor([0.5, 0.0, -1.0])
    w.grad = g.clone()
    opt.step()
    m_hat, v_hat = g, g * g  # bias-corrected first step
    r = m_hat / (v_hat.sqrt() + 1e-6) + 0.1 * torch.tensor([1.0, -2.0, 2.0])
    expected = torch.tensor([1.0, -2.0, 2.0]) - 0.1 * (3.0 / r.norm()) * r
    torch.testing.assert_close(w.data, expected)


def test_lamb_minimises_quadratic():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(10) + 3)
    opt = LAMB([w], lr=0.05)
    start = (w.detach() ** 2).sum().item()
    for _ in range(100):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert (w.detach() ** 2).sum().item() < 0.1 * start


def test_optimizer_arg_errors():
    p = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="trust_coefficient"):
        LARS(p, trust_coefficient=0)
    with pytest.raises(ValueError, match="betas"):
        LAMB(p, betas=(1.0, 0.9))


# --- Against independent implementations: timm's Lamb / Lars (test extra) and apex LARC written out over
# torch.optim.SGD as apex runs it (weight decay and trust folded into the gradient, SGD run without decay).

def _timm_optim():
    from monai_lessmore.utils.torchvision_compat import import_torchvision

    import_torchvision()  # timm imports torchvision; tolerate a CPU torch beside a CUDA torchvision build
    return pytest.importorskip("timm.optim", reason="timm is a test dependency: pip install -e '.[test]'")


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(), torch.nn.Linear(8 * 4, 5))


def _run_pair(ours, ours_opt, theirs, theirs_opt, steps, grad_fn):
    for step in range(steps):
        for p, q in zip(ours.parameters(), theirs.parameters()):
            p.grad = grad_fn(step, p).clone()
            q.grad = p.grad.clone()
        ours_opt.step()
        theirs_opt.step()
        for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=lambda m: f"step {step}, {name}: {m}")


def _random_grads(scale=1.0):
    g = torch.Generator().manual_seed(7)
    return lambda step, p: scale * torch.randn(p.shape, generator=g)


@pytest.mark.parametrize("max_grad_norm", [None, 5.0])
def test_lamb_equals_timm(max_grad_norm):
    """12 steps, SparK's groups and betas: weights adapted with weight decay, biases/BN neither (timm skips the
    trust ratio of a group without weight decay); with clipping the global gradient norm (~25) exceeds 5."""
    timm_optim = _timm_optim()
    a, b = _net(), _net()
    ours = LAMB(param_groups_exclude_bias_and_norm(a, 0.04), lr=1e-2, betas=(0.9, 0.95), max_grad_norm=max_grad_norm)
    theirs = timm_optim.Lamb(param_groups_exclude_bias_and_norm(b, 0.04), lr=1e-2, betas=(0.9, 0.95), eps=1e-6,
                             max_grad_norm=max_grad_norm)
    _run_pair(a, ours, b, theirs, 12, _random_grads(scale=1.0))


def test_lamb_bias_group_not_adapted_like_timm():
    """A BN bias starting at 0 with constant gradient 1 (lr 2.5e-5, betas (0.9, 0.95), wd 0.04): without the trust
    ratio it moves by ~lr per step, as with timm; adapted, it would stay near 0 (||w|| = 0 at the start)."""
    timm_optim = _timm_optim()
    a, b = _net(), _net()
    kw = dict(lr=2.5e-5, betas=(0.9, 0.95))
    ours = LAMB(param_groups_exclude_bias_and_norm(a, 0.04), **kw)
    theirs = timm_optim.Lamb(param_groups_exclude_bias_and_norm(b, 0.04), max_grad_norm=None, **kw)
    _run_pair(a, ours, b, theirs, 100, lambda step, p: torch.ones_like(p))
    bias = a[1].bias
    torch.testing.assert_close(bias, torch.full_like(bias, -100 * 2.5e-5), rtol=1e-3, atol=0)


def test_lamb_leaves_grad_and_checks_max_grad_norm():
    w = torch.nn.Parameter(torch.ones(3))
    opt = LAMB([w], lr=0.1, max_grad_norm=1.0)
    w.grad = torch.full((3,), 10.0)
    opt.step()
    assert torch.equal(w.grad, torch.full((3,), 10.0))
    with pytest.raises(ValueError, match="max_grad_norm"):
        LAMB([w], max_grad_norm=0)


def test_lars_equals_timm():
    """12 steps with momentum, nonzero gradients: SwAV's LARS (apex LARC, clip=False) vs timm's ``Lars``; the
    excluded group is timm's group without weight decay."""
    timm_optim = _timm_optim()
    a, b = _net(), _net()
    ours = LARS(param_groups_exclude_bias_and_norm(a, 1e-2), lr=0.5, momentum=0.9, trust_coefficient=0.001)
    theirs = timm_optim.Lars(param_groups_exclude_bias_and_norm(b, 1e-2), lr=0.5, momentum=0.9, trust_coeff=0.001, eps=1e-8)
    _run_pair(a, ours, b, theirs, 12, _random_grads())


class _ApexLARC:
    """apex ``LARC(SGD(...), trust_coefficient, clip=False)`` as written in apex: for each tensor with nonzero
    weight and gradient norm, fold weight decay and the trust ratio into the gradient; run SGD without decay."""

    def __init__(self, sgd, trust_coefficient=0.001, eps=1e-8):
        self.sgd, self.trust, self.eps = sgd, trust_coefficient, eps

    @torch.no_grad()
    def step(self):
        decays = []
        for group in self.sgd.param_groups:
            wd = group["weight_decay"]
            decays.append(wd)
            group["weight_decay"] = 0
            for p in group["params"]:
                if p.grad is None:
                    continue
                pn, gn = torch.norm(p.data), torch.norm(p.grad.data)
                if pn != 0 and gn != 0:
                    lr = self.trust * pn / (gn + pn * wd + self.eps)
                    p.grad.data += wd * p.data
                    p.grad.data *= lr
        self.sgd.step()
        for group, wd in zip(self.sgd.param_groups, decays):
            group["weight_decay"] = wd


def test_lars_equals_apex_larc_with_zero_gradients():
    """12 steps with momentum in which some tensors get an all-zero gradient: as apex LARC, no weight decay and no
    adaptation for them (a zero gradient on the first step leaves the tensor untouched)."""
    a, b = _net(), _net()
    b_params = list(b.parameters())
    ours = LARS([{"params": list(a.parameters()), "weight_decay": 1e-2}], lr=0.5, momentum=0.9, exclude_bias_and_norm=False)
    apex = _ApexLARC(torch.optim.SGD(b_params, lr=0.5, momentum=0.9, weight_decay=1e-2))
    g = torch.Generator().manual_seed(3)

    def grads(step, p):
        zero = step < 2 or step % 4 == 0  # the weights of the first layer: zero gradient on these steps
        return torch.zeros_like(p) if (p.ndim == 4 and zero) else torch.randn(p.shape, generator=g)

    w0 = a[0].weight.detach().clone()
    for step in range(12):
        for p, q in zip(a.parameters(), b_params):
            p.grad = grads(step, p)
            q.grad = p.grad.clone()
        ours.step()
        apex.step()
        if step == 0:
            assert torch.equal(a[0].weight, w0)  # untouched
        for p, q in zip(a.parameters(), b_params):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_spark_lr_wd_schedule():
    from monai_lessmore.ssl.optim import spark_lr_wd_schedule

    lr, wd = spark_lr_wd_schedule(peak_lr=1.0, epochs=10, iters_per_epoch=10, warmup_epochs=2)
    assert lr.shape == wd.shape == (100,)
    assert lr[0] == pytest.approx(0.005) and lr[10] == pytest.approx(0.005 + 0.995 * 0.5)
    assert lr[20] == pytest.approx(1.0) and lr[-1] == pytest.approx(0.001)
    assert np.all(np.diff(lr[:21]) > 0) and np.all(np.diff(lr[20:]) < 0)
    assert wd[0] == pytest.approx(0.04) and wd[-1] == pytest.approx(0.2) and np.all(np.diff(wd) > 0)
    assert wd[33] == pytest.approx(0.2 + (0.04 - 0.2) * (0.5 + 0.5 * math.cos(math.pi * 33 / 99)))
    with pytest.raises(ValueError, match="warmup_epochs"):
        spark_lr_wd_schedule(peak_lr=1.0, epochs=2, iters_per_epoch=1, warmup_epochs=2)
