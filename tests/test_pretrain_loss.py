"""NT-Xent against Eq. 1 of the SimCLR paper, computed by a plain loop, and the properties the article's
version lacks (normalisation, a masked self-similarity, the positive counted once)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from classiflow.pretrain.loss import nt_xent


def eq1(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """l(i, j) = -log exp(sim(i,j)/t) / sum_{k != i} exp(sim(i,k)/t), averaged over the 2N ordered pairs."""
    z = torch.cat([z1, z2]).double()
    n2, total = len(z), 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        sim = [F.cosine_similarity(z[i], z[k], dim=0) / t for k in range(n2)]
        denominator = sum(torch.exp(sim[k]) for k in range(n2) if k != i)
        total = total - torch.log(torch.exp(sim[j]) / denominator)
    return total / n2


def article(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """The source article's simclr_loss: no normalisation, the self-similarity reduced by 1, not masked."""
    z = torch.cat([z1, z2])
    sim = z @ z.T / t - torch.eye(len(z))
    n = len(z1)
    positives = torch.cat([torch.diag(sim, n), torch.diag(sim, -n)])
    return (-positives + torch.logsumexp(sim, dim=1)).mean()


@pytest.mark.parametrize(("n", "d", "t"), [(4, 8, 0.5), (7, 16, 0.1), (16, 3, 1.0)])
def test_equals_a_loop_over_eq1(n, d, t):
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    assert nt_xent(z1, z2, t).item() == pytest.approx(eq1(z1, z2, t).item(), rel=1e-5)


def test_gradients_equal_the_loops_and_the_self_similarity_gets_none():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 10, generator=g, requires_grad=True), torch.randn(6, 10, generator=g, requires_grad=True)
    nt_xent(a, b, 0.2).backward()
    ours = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    eq1(a, b, 0.2).backward()  # sums over k != i only: no term of sim(i, i) at all
    torch.testing.assert_close(ours[0].double(), a.grad.double(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours[1].double(), b.grad.double(), rtol=1e-4, atol=1e-6)


def test_invariant_to_rescaling_the_projections():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(8, 12, generator=g), torch.randn(8, 12, generator=g)
    scales = torch.rand(8, 1, generator=g) * 10 + 0.1
    assert nt_xent(z1 * scales, z2 * 3.0, 0.3).item() == pytest.approx(nt_xent(z1, z2, 0.3).item(), rel=1e-5)


def test_identical_views_at_a_small_temperature_give_a_loss_near_zero_where_the_articles_cannot():
    g = torch.Generator().manual_seed(3)
    z = F.normalize(torch.randn(32, 128, generator=g), dim=1)
    assert nt_xent(z, z.clone(), 0.05).item() < 1e-3
    assert nt_xent(z, z.clone(), 0.1).item() < 0.05
    # the article's self term, 1/t - 1, sits one unit below the positive in every row: a floor of log(1 + 1/e)
    assert article(z, z.clone(), 0.1).item() > math.log(1 + math.exp(-1)) - 1e-3


def test_symmetric_in_the_two_views():
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(9, 5, generator=g), torch.randn(9, 5, generator=g)
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(nt_xent(z2, z1, 0.5).item(), rel=1e-6)


def test_runs_under_autocast_in_float32():
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = nt_xent(z1.bfloat16(), z2.bfloat16(), 0.2)
    assert low.dtype == torch.float32 and low.item() == pytest.approx(nt_xent(z1, z2, 0.2).item(), rel=2e-2)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        nt_xent(torch.ones(2, 3), torch.ones(2, 3), 0.0)
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(torch.ones(2, 3), torch.ones(3, 3), 0.1)
