"""NT-Xent, the SimCLR loss (Chen et al. 2020, Eq. 1), written from the paper.

For a batch of N images seen twice, the 2N projections are L2-normalised; for each one, its positive is the
other view of the same image and its 2N - 2 negatives are every other projection. The loss of a pair (i, j) is
``-log exp(sim(i, j) / t) / sum_{k != i} exp(sim(i, k) / t)``, averaged over all 2N ordered pairs. The
self-similarity is removed from the denominator (masked to -inf, so it gets no gradient), and the positive
appears in the denominator once. With identical views at a small temperature the loss goes to 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean NT-Xent over both views of ``z1[i]`` / ``z2[i]`` (N, D each); computed in float32 under autocast."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"expected two (N, D) projections of the same shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, positives)
