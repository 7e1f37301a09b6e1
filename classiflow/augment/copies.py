"""What the augment stage leaves for training: the resolved policy, and materialised augmented copies of the
train split (file names, per-copy seeds, loading)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from classiflow.atomic import read_json
from classiflow.config import AugmentParams
from classiflow.data.mapped import load_split
from classiflow.errors import ClassiflowError

POLICY_FILE = "policy.json"


def copy_files(k: int) -> tuple[str, str]:
    return f"train_copy{k}_images.npy", f"train_copy{k}_labels.npy"


def copy_seed(seed: int, k: int) -> int:
    """The generator seed of copy ``k``: independent streams for each (augment.seed, k)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, k]).generate_state(1, np.uint64)[0])


def load_policy(augmented_dir: str | Path, requested: AugmentParams, data_hash: str) -> AugmentParams:
    """The augment stage's resolved settings (``flip: auto`` decided), checked against ``requested``.

    Every key but a resolved ``flip`` must equal the params: a policy written for other settings or other
    data is refused rather than silently trained with.
    """
    path = Path(augmented_dir) / POLICY_FILE
    if not path.exists():
        raise ClassiflowError(f"{augmented_dir}: no {POLICY_FILE}; run the augment stage first")
    try:
        policy = read_json(path)
        resolved = AugmentParams.model_validate(policy["params"])
    except (ValueError, KeyError, TypeError) as err:
        raise ClassiflowError(f"{path}: unreadable ({str(err).splitlines()[0]}); rerun the augment stage") from None
    same = resolved.model_dump(exclude={"flip"}) == requested.model_dump(exclude={"flip"})
    if policy.get("data_hash") != data_hash or not same or requested.flip not in ("auto", resolved.flip):
        raise ClassiflowError(f"{path} was written for other augment params or data; rerun the augment stage")
    return resolved


def load_copies(
    augmented_dir: str | Path, *, data_hash: str | None = None, mmap: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The augment stage's copies as ``[(images N,H,W,C uint8, labels N int64), ...]`` (empty if copies: 0).

    ``data_hash``, when given, must match the prepared data the copies were made from;
    ``mmap`` maps the image arrays instead of reading them into memory (large ones are mapped anyway).
    """
    augmented_dir = Path(augmented_dir)
    policy_path = augmented_dir / POLICY_FILE
    if not policy_path.exists():
        raise ClassiflowError(f"{augmented_dir}: no {POLICY_FILE}; run the augment stage first")
    try:
        policy = read_json(policy_path)
        n_copies, n_images = int(policy["copies"]), int(policy["train_images"])
    except (ValueError, KeyError, TypeError) as err:
        raise ClassiflowError(f"{policy_path}: unreadable ({err}); rerun the augment stage") from None
    if data_hash is not None and policy.get("data_hash") != data_hash:
        raise ClassiflowError(
            f"{augmented_dir} was made from other prepared data (hash {str(policy.get('data_hash'))[:12]}, "
            f"prepared data is {data_hash[:12]}); rerun the augment stage"
        )
    out, shape = [], None
    for k in range(n_copies):
        image_file, label_file = copy_files(k)
        try:
            images = load_split(augmented_dir / image_file, True if mmap else None)
            labels = np.load(augmented_dir / label_file, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ClassiflowError(f"{augmented_dir}: copy {k} unreadable ({err}); rerun the augment stage") from None
        shape = shape or images.shape
        if (
            images.dtype != np.uint8
            or images.ndim != 4
            or images.shape != shape
            or len(images) != n_images
            or labels.shape != (n_images,)
        ):
            raise ClassiflowError(
                f"{augmented_dir}: copy {k} has images {images.dtype} {images.shape} and labels {labels.shape}, "
                f"expected {n_images} uint8 N,H,W,C images and labels; rerun the augment stage"
            )
        out.append((images, labels))
    return out
