"""Run the library's train and evaluate stages on CUDA when a GPU is present (manual check).

python scripts/cuda_check.py     # prints the device used, accuracy and throughput
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classiflow.config import Params  # noqa: E402
from classiflow.data.download import download  # noqa: E402
from classiflow.data.prepare import prepare  # noqa: E402
from classiflow.layout import Layout  # noqa: E402
from classiflow.stages import evaluate, train  # noqa: E402
from tests.imagegen import write_image_folder  # noqa: E402


def main() -> None:
    print("torch", torch.__version__, "cuda available:", torch.cuda.is_available())
    with tempfile.TemporaryDirectory() as tmp:
        layout = Layout.at(tmp)
        folder = write_image_folder(Path(tmp) / "shapes", per_class=200, size=32)
        params = Params.model_validate(
            {"data": {"source": str(folder)}, "train": {"epochs": 5, "batch_size": 64, "lr": 0.01}}
        )
        download(params.data.source, layout.raw)
        prepare(layout.raw, layout.prepared, params.data)
        start = time.perf_counter()
        summary = train.run(layout, params).value
        print(
            f"train: device {summary['device']}, best val accuracy {summary['best_val_accuracy']:.3f}, "
            f"{summary['images_per_second']:.0f} img/s, {time.perf_counter() - start:.1f} s"
        )
        metrics = evaluate.run(layout, params).value
        print(f"evaluate: test accuracy {metrics['accuracy']:.3f} on {metrics['test_size']} images")
        if torch.cuda.is_available():
            assert summary["device"].startswith("cuda"), summary["device"]
        assert metrics["accuracy"] > 0.8, metrics["accuracy"]
    print("cuda check: OK")


if __name__ == "__main__":
    main()
