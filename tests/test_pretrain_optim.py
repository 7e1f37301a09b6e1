"""The pretrain stage's optimisers: each one learns NT-Xent, and LARS's step does not follow the gradient's scale."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from classiflow.pretrain.loop import _optimizer
from classiflow.pretrain.loss import nt_xent
from classiflow.pretrain.params import PretrainParams

LR = {"adamw": 1e-2, "sgd": 0.1, "lars": 1.0}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 8))


@pytest.mark.parametrize("name", sorted(LR))
def test_each_optimizer_lowers_the_contrastive_loss(name):
    net, x = _net(), torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    opt, sched = _optimizer(net, PretrainParams(optimizer=name, lr=LR[name], epochs=1, warmup_epochs=0), 60)
    losses = []
    for _ in range(60):
        a, b = x + 0.3 * torch.randn_like(x), x + 0.3 * torch.randn_like(x)
        loss = nt_xent(net(a), net(b), 0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10]), (name, losses[:3], losses[-3:])


def _first_step(name: str, scale: float) -> torch.Tensor:
    net = _net()
    before = net[0].weight.detach().clone()
    opt, _ = _optimizer(net, PretrainParams(optimizer=name, lr=0.1, momentum=0.0, epochs=1, warmup_epochs=0), 1)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(2))
    (scale * nt_xent(net(x), net(x + 0.1), 0.2)).backward()
    opt.step()
    return (net[0].weight.detach() - before).norm()


def test_lars_scales_each_weights_step_by_its_norm_not_by_the_gradient():
    assert _first_step("sgd", 100.0) / _first_step("sgd", 1.0) == pytest.approx(100.0, rel=1e-3)
    assert _first_step("lars", 100.0) / _first_step("lars", 1.0) == pytest.approx(1.0, rel=1e-2)
