"""The encoder SimCLR trains: the configured model without its classifier, plus a projection head.

The classifier is the module the train stage replaces anyway (timm's declared classifier, else the last linear
layer: ``classiflow.models.timm_zoo.head_module_names``), so what pretraining learns is exactly the weights the
train stage loads through ``model.pretrained``: every tensor but the head's. The projection head (linear,
batch norm, ReLU, linear; SimCLR's) is used for the loss only and is not kept.
"""

from __future__ import annotations

import torch
from torch import nn

from classiflow.errors import ClassiflowError
from classiflow.models.timm_zoo import head_module_names

KNN_TEMPERATURE = 0.07  # of the similarity-weighted vote (Wu et al. 2018)
CHUNK = 1024  # queries compared at once: bounds the similarity matrix


def strip_head(model: nn.Module, channels: int, size: int) -> tuple[nn.Module, int]:
    """``model`` with its classifier replaced by the identity (in place), and the feature width it outputs for
    ``channels`` x ``size`` x ``size`` inputs."""
    names = head_module_names(model)
    if not names:
        raise ClassiflowError(f"pretrain: {type(model).__name__} has no classifier layer to take off")
    for name in names:
        model.set_submodule(name, nn.Identity())
    was_training = model.training
    model.eval()
    with torch.no_grad():
        features = model(torch.zeros(2, channels, size, size))
    model.train(was_training)
    if features.ndim != 2:
        raise ClassiflowError(f"pretrain: {type(model).__name__} without its classifier gives {tuple(features.shape)}")
    return model, int(features.shape[1])


class SimCLR(nn.Module):
    """Encoder and projection head; ``forward`` gives the projections NT-Xent compares."""

    def __init__(self, encoder: nn.Module, features: int, hidden: int, out: int):
        super().__init__()
        self.encoder = encoder
        self.projector = nn.Sequential(
            nn.Linear(features, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


@torch.no_grad()
def embed(encoder: nn.Module, images: torch.Tensor, normalizer, device, batch: int = 512) -> torch.Tensor:
    """L2-normalised features of uint8 N,C,H,W ``images`` (eval mode), on the CPU."""
    was_training = encoder.training
    encoder.eval()
    out = [
        torch.nn.functional.normalize(encoder(normalizer(images[i : i + batch].to(device))).float(), dim=1)
        for i in range(0, len(images), batch)
    ]
    encoder.train(was_training)
    return torch.cat(out).cpu() if out else torch.zeros(0, 0)


def knn_accuracy(
    bank: torch.Tensor, bank_labels: torch.Tensor, query: torch.Tensor, labels: torch.Tensor, k: int, classes: int
) -> float:
    """Accuracy of a k-nearest-neighbour vote by cosine similarity (weights exp(sim / 0.07), as in Wu et al.
    2018) of normalised ``query`` features against the ``bank``."""
    if len(query) == 0 or len(bank) == 0:
        return 0.0
    k = min(k, len(bank))
    correct = 0
    for start in range(0, len(query), CHUNK):
        top, idx = (query[start : start + CHUNK] @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(top), classes).scatter_add_(1, bank_labels[idx], (top / KNN_TEMPERATURE).exp())
        correct += int((votes.argmax(1) == labels[start : start + CHUNK]).sum())
    return correct / len(query)
