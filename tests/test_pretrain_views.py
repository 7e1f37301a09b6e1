"""SimCLR's batched views: each image its own crop, mirror and colours, seeded, within 0-255; and the pretraining
loop learns, monitors kNN accuracy and resumes to the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from classiflow.models import build_model
from classiflow.pretrain.encoder import knn_accuracy, strip_head
from classiflow.pretrain.loop import Images, pretrain
from classiflow.pretrain.params import PretrainParams
from classiflow.pretrain.views import gaussian_blur, rotate_hue, two_views, view
from classiflow.training.loop import Resume

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PLAIN = {"crop_scale": (1.0, 1.0), "flip": False, "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0}


def _images(n: int = 8, c: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_without_augmentation_a_view_is_the_image():
    x = _images()
    out = view(x, PretrainParams(**PLAIN), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x.float(), atol=1e-3, rtol=0)


def test_each_image_is_itself_or_its_mirror_when_only_flipping():
    x = _images(32)
    out = view(x, PretrainParams(**PLAIN | {"flip": True}), torch.Generator().manual_seed(0))
    same = (out - x.float()).abs().amax(dim=(1, 2, 3)) < 1e-3
    mirrored = (out - x.float().flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-3
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 32


def test_views_are_seeded_differ_per_image_and_stay_in_range():
    x = _images(16)
    cfg = PretrainParams(blur_p=0.5)
    a1, a2 = two_views(x, cfg, torch.Generator().manual_seed(7))
    b1, _ = two_views(x, cfg, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a1, b1)
    assert a1.shape == x.shape and a1.dtype == torch.float32
    assert float(a1.min()) >= 0 and float(a1.max()) <= 255
    assert not torch.allclose(a1, a2)  # two independent views
    gray = (a1[:, 0] == a1[:, 1]).flatten(1).all(1) & (a1[:, 1] == a1[:, 2]).flatten(1).all(1)
    assert int(gray.sum()) < 16  # grayscale is drawn per image (p 0.2), not for the batch


def test_colour_operations_keep_what_they_should():
    x = _images(4).float()
    torch.testing.assert_close(rotate_hue(x, torch.zeros(4)), x, atol=1e-3, rtol=0)
    torch.testing.assert_close(rotate_hue(x, torch.ones(4)), x, atol=1e-2, rtol=0)  # a full turn
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    turned = rotate_hue(x, torch.full((4,), 0.3))
    torch.testing.assert_close((turned * luma).sum(1), (x * luma).sum(1), atol=1e-2, rtol=0)
    flat = torch.full((2, 3, 12, 12), 100.0)
    torch.testing.assert_close(gaussian_blur(flat, torch.tensor([True, False]), torch.tensor([1.5, 1.5])), flat)


def test_gray_images_get_crops_and_no_colour():
    out = view(_images(4, c=1), PretrainParams(), torch.Generator().manual_seed(0))
    assert out.shape == (4, 1, 16, 16)


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes a kNN on random features already half separates: bright left half vs bright right half."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    x = torch.randint(0, 60, (n, 3, 16, 16), generator=g)
    x[labels == 0, :, :, :8] += 150
    x[labels == 1, :, :, 8:] += 150
    return x.to(torch.uint8), labels


def _setup(epochs: int, **cfg):
    torch.manual_seed(0)
    model = build_model("simplecnn", 3, 2, 16)
    train, val = _blobs(64, 1), _blobs(32, 2)
    images = Images(pool=train[0], bank=train, val=val, classes=2)
    params = PretrainParams(epochs=epochs, batch_size=32, hidden_dim=32, projection_dim=16, flip=False, **cfg)
    return model, images, params


def test_the_loop_lowers_the_loss_and_reports_knn_accuracy():
    model, images, cfg = _setup(4, lr=3e-3)
    result = pretrain(model, images, [0.3] * 3, [0.3] * 3, cfg)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert all(0.0 <= h["knn_accuracy"] <= 1.0 and 0.0 < h["view_share"] < 1.0 for h in result.history)
    assert result.history[-1]["knn_accuracy"] >= 0.8
    assert isinstance(result.encoder.get_submodule("classifier.5"), torch.nn.Identity)  # simplecnn's classifier
    assert not any(k.startswith("classifier.5.") for k in result.encoder.state_dict())


class Killed(Exception):
    pass


def test_a_resumed_run_ends_with_the_uninterrupted_runs_weights(tmp_path):
    whole, images, cfg = _setup(3, warmup_epochs=0.5)
    uninterrupted = pretrain(whole, images, [0.3] * 3, [0.3] * 3, cfg).encoder.state_dict()
    path = tmp_path / "last.pt"

    def kill_after_two(stats: dict) -> None:
        if stats["epoch"] == 2:
            raise Killed  # after the resume point of epoch 2 is written, as a SIGKILL would find it

    first, images, cfg = _setup(3, warmup_epochs=0.5)
    with pytest.raises(Killed):
        pretrain(first, images, [0.3] * 3, [0.3] * 3, cfg, Resume(path, "key"), kill_after_two)
    again, images, cfg = _setup(3, warmup_epochs=0.5)
    result = pretrain(again, images, [0.3] * 3, [0.3] * 3, cfg, Resume(path, "key"))
    assert result.resumed_from_epoch == 2 and [h["epoch"] for h in result.history] == [1, 2, 3]
    for key, value in result.encoder.state_dict().items():
        torch.testing.assert_close(value, uninterrupted[key], msg=key)
    other, images, cfg = _setup(3, warmup_epochs=0.5)
    assert pretrain(other, images, [0.3] * 3, [0.3] * 3, cfg, Resume(path, "another run")).resumed_from_epoch == 0


def test_knn_votes_by_similarity():
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    query = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0]]), dim=1)
    assert knn_accuracy(bank, torch.tensor([0, 0, 1]), query, torch.tensor([0, 1]), k=2, classes=2) == 1.0
    assert np.isclose(knn_accuracy(bank, torch.tensor([0, 0, 1]), query, torch.tensor([1, 1]), k=2, classes=2), 0.5)


def test_strip_head_gives_features_for_conv_nets_and_timm():
    for name in ("fastnet", "resnet20", "timm/test_efficientnet"):
        encoder, width = strip_head(build_model(name, 3, 5, 32), 3, 32)
        assert encoder(torch.zeros(2, 3, 32, 32)).shape == (2, width), name
