"""How good the pretrained features are before any fine-tuning: a linear probe (scikit-learn's logistic
regression on standardised frozen features of the labelled train images) and the kNN vote, both scored on test.

These are the usual readings of self-supervised features (SimCLR's linear evaluation protocol, and the kNN
monitor of Wu et al. 2018); the evaluate stage reports them beside the fine-tuned model's accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from classiflow.errors import ClassiflowError
from classiflow.layout import Layout
from classiflow.models import build_model
from classiflow.pretrain.encoder import embed, knn_accuracy, strip_head
from classiflow.pretrain.made import encoder_spec
from classiflow.tensors import Normalizer, to_nchw

PROBE_SEED = 0


def load_encoder(layout: Layout) -> tuple[nn.Module, dict]:
    """The pretrain stage's encoder, rebuilt from its spec (every tensor must fit)."""
    spec = encoder_spec(layout)
    model = build_model(**spec["model"])
    encoder, _ = strip_head(model, spec["model"]["in_channels"], spec["model"]["image_size"])
    try:
        encoder.load_state_dict(load_file(str(layout.encoder)), strict=True)
    except (RuntimeError, OSError) as err:
        raise ClassiflowError(f"{layout.encoder}: does not fit its spec ({str(err).splitlines()[0]})") from None
    return encoder.eval(), spec


def frozen_scores(encoder: nn.Module, spec: dict, data, k: int, device: torch.device) -> dict:
    """Test accuracy of a linear probe and of a kNN vote on the encoder's frozen features."""
    normalizer = Normalizer(spec["mean"], spec["std"]).to(device)
    encoder = encoder.to(device)
    features = {s: embed(encoder, to_nchw(data.images[s]), normalizer, device) for s in ("train", "test")}
    labels = {s: torch.from_numpy(data.labels[s]) for s in ("train", "test")}
    knn = knn_accuracy(features["train"], labels["train"], features["test"], labels["test"], k, len(data.classes))
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=PROBE_SEED))
    probe.fit(features["train"].numpy(), data.labels["train"])
    linear = float(np.mean(probe.predict(features["test"].numpy()) == data.labels["test"]))
    return {"linear_probe_accuracy": linear, "knn_accuracy": knn, "k": k, "features": int(features["test"].shape[1]),
            "labelled_images": len(data.labels["train"])}  # fmt: skip
