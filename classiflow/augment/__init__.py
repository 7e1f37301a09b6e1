"""Data augmentation: batched uint8 image transforms, MixUp/CutMix, previews and on-disk copies."""

from classiflow.augment.batch import BatchAugment, build_augment
from classiflow.augment.copies import load_copies, load_policy
from classiflow.augment.preview import write_preview

__all__ = ["BatchAugment", "build_augment", "load_copies", "load_policy", "write_preview"]
