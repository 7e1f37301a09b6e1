"""Training-time augmentation of whole uint8 batches, with batched tensor ops wherever possible.

Order of :meth:`BatchAugment.images`: horizontal flip and translation (batched, one gather
for the whole batch), then the per-image transforms (rotation, colour jitter, TrivialAugment
or RandAugment: torchvision v2 would draw one set of random parameters for a whole batch,
so these loop over the images), then random erasing (batched). :meth:`BatchAugment.mix`
(MixUp or CutMix) runs later, on the normalised float batch.

Reproducibility: every random number comes from the ``generator`` argument. The per-image
v2 transforms draw from torch's global CPU generator, so they run inside
:func:`torch.random.fork_rng` with the global generator seeded from ``generator``: the same
generator state gives the same batch, and the caller's global RNG stream is left untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from classiflow.augment.ops import (
    ERASE_RATIO,
    ERASE_SCALE,
    check_images,
    cutmix,
    erase,
    flip_translate,
    mixup,
    seed_from,
)
from classiflow.config import AugmentParams
from classiflow.errors import ClassiflowError

RANDAUGMENT_OPS, RANDAUGMENT_MAGNITUDE = 2, 9  # torchvision's defaults
# Per-image ops on images up to this many pixels run on one intra-op thread: one small image
# gains nothing from more, and on a busy CPU the thread hand-offs cost up to 30x (measured on
# 2 cores: a rotation+TrivialAugment loop fell from ~1,000 to ~40 images/s with 2 threads).
SINGLE_THREAD_PIXELS = 64 * 64


@dataclass(frozen=True)
class BatchAugment:
    """A resolved augmentation policy; build it with :func:`build_augment`."""

    num_classes: int
    flip: bool = False
    translate: int = 0
    rotation: float = 0.0
    color_jitter: float = 0.0
    auto: str = "none"
    erasing: float = 0.0
    mix_kind: str = "none"  # none | mixup | cutmix (`mix` is the method)
    mix_alpha: float = 1.0
    channels: int | None = None  # when known, describe() is exact and images() checks it
    image_size: int | None = None  # when known, build_augment already checked translate against it

    @property
    def has_per_image(self) -> bool:
        return self.rotation > 0 or self.color_jitter > 0 or self.auto != "none"

    @property
    def has_image_ops(self) -> bool:
        """True when :meth:`images` changes anything."""
        return self.flip or self.translate > 0 or self.erasing > 0 or self.has_per_image

    @property
    def has_mix(self) -> bool:
        return self.mix_kind != "none"

    @property
    def is_identity(self) -> bool:
        """Nothing enabled: :meth:`images` returns its input and :meth:`mix` leaves x, y alone."""
        return not self.has_image_ops and not self.has_mix

    def describe(self) -> list[str]:
        """The active transforms, in the order they run; empty for the identity."""
        out = []
        if self.flip:
            out.append("horizontal flip p=0.5 (batched)")
        if self.translate:
            out.append(f"translate ±{self.translate} px (zero-padded random crop, batched)")
        if self.rotation:
            out.append(f"rotation ±{self.rotation:g}° (per image)")
        if self.color_jitter:
            what = {1: "brightness/contrast", 3: "brightness/contrast/saturation"}.get(
                self.channels, "brightness/contrast/saturation (saturation skipped on 1-channel images)"
            )
            out.append(f"colour jitter {what} {self.color_jitter:g} (per image)")
        if self.auto == "trivial":
            out.append("TrivialAugmentWide (per image)")
        elif self.auto == "randaugment":
            out.append(f"RandAugment {RANDAUGMENT_OPS} ops, magnitude {RANDAUGMENT_MAGNITUDE} (per image)")
        if self.erasing:
            out.append(
                f"random erasing p={self.erasing:g}, scale {ERASE_SCALE[0]}-{ERASE_SCALE[1]}, "
                f"ratio {ERASE_RATIO[0]}-{ERASE_RATIO[1]}, fill 0 (batched)"
            )
        if self.mix_kind != "none":
            name = {"mixup": "MixUp", "cutmix": "CutMix"}[self.mix_kind]
            out.append(f"{name} alpha={self.mix_alpha:g} (training loop, normalised batches, soft targets)")
        return out

    def _per_image_transform(self, channels: int) -> Callable[[torch.Tensor], torch.Tensor]:
        ops: list = []
        if self.rotation:
            ops.append(v2.RandomRotation(self.rotation))
        if self.color_jitter:
            s = self.color_jitter
            ops.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s if channels == 3 else None))
        if self.auto == "trivial":
            ops.append(v2.TrivialAugmentWide())
        elif self.auto == "randaugment":
            ops.append(v2.RandAugment(num_ops=RANDAUGMENT_OPS, magnitude=RANDAUGMENT_MAGNITUDE))
        return v2.Compose(ops)

    def _per_image(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        transform = self._per_image_transform(x.shape[1])
        out = torch.empty_like(x)
        seed = seed_from(generator)
        threads = torch.get_num_threads()
        single = x.device.type == "cpu" and x.shape[-2] * x.shape[-1] <= SINGLE_THREAD_PIXELS
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: v2 draws its parameters there
            if single:
                torch.set_num_threads(1)
            try:
                for i in range(len(x)):
                    out[i] = transform(x[i])
            finally:
                if single:
                    torch.set_num_threads(threads)
        return out

    def check(self, x: torch.Tensor) -> None:
        check_images(x)
        h, w = x.shape[-2:]
        if self.translate >= min(h, w):
            raise ClassiflowError(f"augment.translate {self.translate}: must be smaller than the image ({h}x{w})")
        if self.channels is not None and x.shape[1] != self.channels:
            raise ClassiflowError(f"augment: built for {self.channels}-channel images, got {x.shape[1]} channels")

    def images(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment an N,C,H,W uint8 batch (CPU or CUDA); same shape, dtype and device; ``x`` is not modified.

        For the identity policy ``x`` itself is returned.
        """
        self.check(x)
        if not self.has_image_ops or len(x) == 0:
            return x
        out = x
        if self.flip or self.translate:
            out = flip_translate(out, generator, flip=self.flip, pad=self.translate)
        if self.has_per_image:
            out = self._per_image(out, generator)
        if self.erasing:
            out = erase(out, generator, self.erasing)
        return out

    def mix(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp or CutMix of a normalised float batch: ``(mixed x, N x num_classes soft targets)``.

        With ``mix: none`` it returns ``(x, y)`` unchanged (``y`` stays int64 class indices).
        Each image is paired with its neighbour in the batch (``roll(1)``, as torchvision does;
        the training loop's batches are already shuffled).
        """
        if self.mix_kind == "none":
            return x, y
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ClassiflowError(f"augment.mix: expected a normalised float N,C,H,W batch, got {got}")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (len(x),):
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise ClassiflowError(f"augment.mix: expected {len(x)} int64 class indices, got {got}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ClassiflowError(f"augment.mix: labels must lie in [0, {self.num_classes})")
        fn = mixup if self.mix_kind == "mixup" else cutmix
        return fn(x, y, self.num_classes, self.mix_alpha, generator)


def build_augment(
    cfg: AugmentParams, num_classes: int, *, channels: int | None = None, image_size: int | None = None
) -> BatchAugment:
    """The policy ``cfg`` describes (``policy: none`` switches everything off).

    ``channels`` and ``image_size``, when given, are checked here instead of at the first batch.
    """
    if num_classes < 1:
        raise ClassiflowError(f"augment: num_classes must be >= 1, got {num_classes}")
    if channels is not None and channels not in (1, 3):
        raise ClassiflowError(f"augment: images must have 1 or 3 channels, got {channels}")
    if image_size is not None and cfg.policy != "none" and cfg.translate >= image_size:
        raise ClassiflowError(
            f"augment.translate {cfg.translate}: must be smaller than the image size ({image_size} px)"
        )
    if cfg.policy == "none":
        return BatchAugment(num_classes=num_classes, channels=channels, image_size=image_size)
    if cfg.flip == "auto":
        raise ClassiflowError("augment.flip auto is decided by the augment stage; build from its resolved policy")
    return BatchAugment(
        num_classes=num_classes,
        flip=cfg.flip,
        translate=cfg.translate,
        rotation=cfg.rotation,
        color_jitter=cfg.color_jitter,
        auto=cfg.auto,
        erasing=cfg.erasing,
        mix_kind=cfg.mix,
        mix_alpha=cfg.mix_alpha,
        channels=channels,
        image_size=image_size,
    )
