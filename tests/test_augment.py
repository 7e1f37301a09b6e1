import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from classiflow.atomic import write_json
from classiflow.augment import BatchAugment, build_augment, load_copies
from classiflow.augment.ops import ERASE_SCALE
from classiflow.config import AugmentParams, parse_params
from classiflow.errors import ClassiflowError
from classiflow.layout import Layout
from classiflow.stages import augment as augment_stage

OFF = {"flip": False, "translate": 0}
FULL = {"rotation": 15, "color_jitter": 0.4, "auto": "trivial", "erasing": 0.5}


def policy(num_classes: int = 10, **fields) -> BatchAugment:
    """Flip on unless ``fields`` says otherwise (the default, auto, is for the augment stage to decide)."""
    return build_augment(AugmentParams(**{"flip": True, **fields}), num_classes)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n: int = 64, c: int = 3, size: int = 32, low: int = 0, seed: int = 0) -> torch.Tensor:
    return torch.randint(low, 256, (n, c, size, size), dtype=torch.uint8, generator=gen(seed))


def test_policy_none_is_identity():
    aug = policy(policy="none", **FULL, mix="mixup")
    assert aug.is_identity and aug.describe() == []
    x = batch()
    assert torch.equal(aug.images(x, gen()), x)
    xf, y = torch.randn(8, 3, 32, 32), torch.arange(8)
    assert aug.mix(xf, y, gen()) == (xf, y)


def test_defaults_are_flip_and_translate():
    aug = policy()
    assert not aug.is_identity and not aug.has_mix
    assert aug.describe() == ["horizontal flip p=0.5 (batched)", "translate ±2 px (zero-padded random crop, batched)"]


@pytest.mark.parametrize(
    "fields",
    [
        {"flip": True},
        {"translate": 4},
        {"rotation": 20.0},
        {"color_jitter": 0.5},
        {"auto": "trivial"},
        {"auto": "randaugment"},
        {"erasing": 1.0},
    ],
    ids=lambda f: next(iter(f)) + "=" + str(next(iter(f.values()))),
)
@pytest.mark.parametrize("channels", [3, 1])
def test_each_transform_changes_images_but_not_shape(fields, channels):
    aug = policy(**{**OFF, **fields})
    assert len(aug.describe()) == 1 and not aug.is_identity
    x = batch(c=channels)
    before = x.clone()
    out = aug.images(x, gen())
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.device == x.device
    assert torch.equal(x, before), "the input batch was modified"
    changed = (out != x).flatten(1).any(1)
    assert changed.float().mean() > 0.3


def test_flip_mirrors_the_flipped_rows_only():
    x = batch()
    out = policy(**{**OFF, "flip": True}).images(x, gen(1))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)])
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert (flipped ^ same).all()
    assert 10 < flipped.sum() < 54


def test_translate_is_a_crop_of_the_zero_padded_image():
    pad = 3
    x = batch(low=1)  # no zero pixels: the padding is recognisable
    out = policy(**{**OFF, "translate": pad}).images(x, gen(2))
    padded = F.pad(x, (pad, pad, pad, pad))
    shifts = []
    for i in range(len(x)):
        found = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 32, dx : dx + 32])
        ]
        assert len(found) == 1, f"image {i} is not a crop of its padded original"
        shifts.append(found[0])
    assert len(set(shifts)) > 10  # the shifts vary per image


def test_same_seed_same_output_and_global_rng_untouched():
    aug = policy(**FULL)
    x = batch(n=32)
    state = torch.get_rng_state()
    a = aug.images(x, gen(7))
    assert torch.equal(torch.get_rng_state(), state), "images() consumed torch's global RNG"
    assert torch.equal(a, aug.images(x, gen(7)))
    assert not torch.equal(a, aug.images(x, gen(8)))
    g = gen(7)
    first, second = aug.images(x, g), aug.images(x, g)
    assert torch.equal(first, a) and not torch.equal(first, second)  # the generator advances


def test_erasing_zeroes_one_rectangle():
    x = batch(low=1)
    out = policy(**{**OFF, "erasing": 1.0}).images(x, gen(3))
    erased = 0
    for i in range(len(x)):
        zero = (out[i] == 0).all(0)
        assert torch.equal(out[i][:, ~zero], x[i][:, ~zero]), "pixels outside the box changed"
        if not zero.any():
            continue
        erased += 1
        rows, cols = zero.any(1).nonzero().squeeze(1), zero.any(0).nonzero().squeeze(1)
        box = zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and int(zero.sum()) == box.numel(), "the erased pixels do not form a rectangle"
        assert 0.5 * ERASE_SCALE[0] <= box.numel() / (32 * 32) <= 1.5 * ERASE_SCALE[1]
    assert erased >= 60  # p = 1: a fitting box is (nearly) always found


def test_erasing_probability_is_respected():
    x = batch(n=512, low=1)
    out = policy(**{**OFF, "erasing": 0.25}).images(x, gen(4))
    share = (out == 0).flatten(1).any(1).float().mean().item()
    assert 0.17 < share < 0.33


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mix_soft_targets(kind):
    aug = policy(mix=kind, mix_alpha=1.0)
    n, k = 16, 10
    y = torch.arange(n) % k
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()
    both = 0
    for seed in range(5):
        mixed, target = aug.mix(x, y, gen(seed))
        assert mixed.shape == x.shape and target.shape == (n, k) and target.dtype == torch.float32
        assert torch.allclose(target.sum(1), torch.ones(n))
        other = y.roll(1)
        own = target[torch.arange(n), y]
        assert torch.allclose(own + target[torch.arange(n), other], torch.ones(n))
        if kind == "mixup":  # a convex combination with the neighbour, weighted as the targets say
            expected = own.view(n, 1, 1, 1) * x + (1 - own.view(n, 1, 1, 1)) * x.roll(1, 0)
            assert torch.allclose(mixed, expected, atol=1e-5)
        else:  # each image keeps its own pixels outside the box; the box share is the other's mass
            share_own = (mixed == x).flatten(1).float().mean(1)
            assert torch.allclose(own, share_own, atol=1e-6)
        both += bool(((own > 0) & (own < 1)).all())
    assert both >= 3
    a, b = aug.mix(x, y, gen(9)), aug.mix(x, y, gen(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_mix_none_keeps_class_indices():
    aug = policy(**FULL)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    out_x, out_y = aug.mix(x, y, gen())
    assert out_x is x and out_y is y and out_y.dtype == torch.int64


def test_grayscale_full_policy():
    aug = build_augment(AugmentParams(**{**FULL, "auto": "randaugment", "flip": True}), 10, channels=1, image_size=28)
    assert "saturation" not in " ".join(aug.describe())
    x = batch(c=1, size=28)
    out = aug.images(x, gen())
    assert out.shape == x.shape and out.dtype == torch.uint8


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(2, 3, 32, 32),  # float
        torch.zeros(3, 32, 32, dtype=torch.uint8),  # no batch dimension
        torch.zeros(2, 32, 32, 3, dtype=torch.uint8),  # N,H,W,C
        torch.zeros(2, 2, 32, 32, dtype=torch.uint8),  # 2 channels
        np.zeros((2, 3, 32, 32), dtype=np.uint8),  # not a tensor
    ],
    ids=["float", "3d", "nhwc", "2ch", "numpy"],
)
def test_bad_batches_are_user_errors(bad):
    with pytest.raises(ClassiflowError):
        policy().images(bad, gen())


def test_bad_configuration_is_a_user_error():
    with pytest.raises(ClassiflowError, match="translate"):
        build_augment(AugmentParams(translate=8), 10, image_size=8)
    with pytest.raises(ClassiflowError, match="translate"):
        policy(translate=16).images(batch(size=16), gen())
    with pytest.raises(ClassiflowError, match="channel"):
        build_augment(AugmentParams(flip=True), 10, channels=3).images(batch(c=1), gen())
    with pytest.raises(ClassiflowError, match="flip auto is decided by the augment stage"):
        build_augment(AugmentParams(), 10)
    aug = policy(mix="mixup")
    with pytest.raises(ClassiflowError, match="float"):
        aug.mix(batch(n=4), torch.arange(4), gen())
    with pytest.raises(ClassiflowError, match="labels"):
        aug.mix(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 10]), gen())
    build_augment(AugmentParams(policy="none", translate=64), 10, image_size=32)  # off: not checked


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_match_cpu_ops():
    aug = policy(**FULL, mix="cutmix")
    x = batch()
    out = aug.images(x.cuda(), gen(5))
    assert out.is_cuda and out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out, aug.images(x.cuda(), gen(5)))
    flip_translate = policy()
    assert torch.equal(flip_translate.images(x.cuda(), gen(6)).cpu(), flip_translate.images(x, gen(6)))
    mixed, target = aug.mix(torch.randn(8, 3, 32, 32, device="cuda"), torch.arange(8, device="cuda"), gen())
    assert mixed.is_cuda and target.is_cuda and torch.allclose(target.sum(1), torch.ones(8, device="cuda"))


def write_prepared(root, n=40, size=16, channels=3, classes=("cat", "dog", "frog")):
    rng = np.random.default_rng(0)
    out = root / "data" / "prepared"
    out.mkdir(parents=True)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    labels = (np.arange(n) % len(classes)).astype(np.int64)
    np.save(out / "train_images.npy", images)
    np.save(out / "train_labels.npy", labels)
    np.save(out / "val_images.npy", images[: n // 4])
    np.save(out / "val_labels.npy", labels[: n // 4])
    write_json(
        out / "meta.json",
        {
            "format_version": 1,
            "dataset": "tiny",
            "source": "generated",
            "source_sha256": None,
            "classes": list(classes),
            "channels": channels,
            "image_size": size,
            "mean": [0.5] * channels,
            "std": [0.25] * channels,
            "sizes": {"train": n, "val": n // 4, "test": 0},
            "class_counts": {"train": np.bincount(labels, minlength=len(classes)).tolist()},
            "skipped_count": 0,
            "skipped": [],
            "data_hash": "f" * 64,
        },
    )
    return images, labels


@pytest.mark.parametrize("channels", [3, 1])
def test_stage_writes_policy_preview_and_copies(tmp_path, channels):
    images, labels = write_prepared(tmp_path, channels=channels)
    layout = Layout.at(tmp_path)
    params = parse_params({"augment": {**FULL, "mix": "cutmix", "copies": 2, "preview": 8, "translate": 2}})
    summary = augment_stage.run(layout, params).value

    policy_json = json.loads(layout.augment_policy.read_text())
    assert policy_json["data_hash"] == "f" * 64 and policy_json["train_images"] == 40
    assert policy_json["copies"] == 2 and policy_json["transforms"] == summary["transforms"]
    assert policy_json["params"]["rotation"] == 15 and policy_json["mix"]["materialised"] is False
    png = layout.augment_preview.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert summary["copies"] == 2 and summary["preview"] == str(layout.augment_preview)
    assert summary["images_per_second"] > 0 and any("CutMix" in t for t in summary["transforms"])

    copies = load_copies(layout.augmented, data_hash="f" * 64)
    assert len(copies) == 2
    for copy_images, copy_labels in copies:
        assert copy_images.shape == images.shape and copy_images.dtype == np.uint8
        np.testing.assert_array_equal(copy_labels, labels)
        assert not np.array_equal(copy_images, images)
    assert not np.array_equal(copies[0][0], copies[1][0])

    augment_stage.run(layout, params)  # the same seed reproduces the copies
    again = load_copies(layout.augmented)
    np.testing.assert_array_equal(again[0][0], copies[0][0])
    np.testing.assert_array_equal(again[1][0], copies[1][0])
    assert not [p for p in layout.augmented.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_stage_without_copies_replaces_old_ones(tmp_path):
    write_prepared(tmp_path)
    layout = Layout.at(tmp_path)
    augment_stage.run(layout, parse_params({"augment": {"copies": 1, "preview": 4}}))
    assert (layout.augmented / "train_copy0_images.npy").exists()
    summary = augment_stage.run(layout, parse_params({"augment": {"policy": "none", "preview": 4}})).value
    assert summary["transforms"] == [] and summary["copies"] == 0
    assert sorted(p.name for p in layout.augmented.iterdir()) == ["policy.json"]
    assert load_copies(layout.augmented) == []


def test_load_copies_errors(tmp_path):
    with pytest.raises(ClassiflowError, match="run the augment stage"):
        load_copies(tmp_path / "missing")
    write_prepared(tmp_path)
    layout = Layout.at(tmp_path)
    augment_stage.run(layout, parse_params({"augment": {"copies": 2, "preview": 4}}))
    with pytest.raises(ClassiflowError, match="other prepared data"):
        load_copies(layout.augmented, data_hash="0" * 64)
    np.save(layout.augmented / "train_copy1_labels.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(ClassiflowError, match="copy 1"):
        load_copies(layout.augmented)
    (layout.augmented / "train_copy0_images.npy").unlink()
    with pytest.raises(ClassiflowError, match="copy 0"):
        load_copies(layout.augmented)


def test_stage_rejects_translate_larger_than_the_images(tmp_path):
    write_prepared(tmp_path, size=8)
    with pytest.raises(ClassiflowError, match="translate"):
        augment_stage.run(Layout.at(tmp_path), parse_params({"augment": {"translate": 8}}))
    assert not (tmp_path / "data" / "augmented").exists()
