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
