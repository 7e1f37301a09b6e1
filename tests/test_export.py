"""Export: TorchScript and ONNX files that compute what PyTorch computes, checked int8 files, and the stage."""

import shutil

import numpy as np
import onnxruntime
import pytest
import torch
from pydantic import ValidationError

from classiflow.atomic import read_json
from classiflow.config import DataParams, parse_params
from classiflow.data.download import download
from classiflow.data.prepare import prepare
from classiflow.errors import ClassiflowError
from classiflow.export import convert, pipeline, runtime
from classiflow.export.params import ExportParams
from classiflow.export.pipeline import Images, Source, export_model
from classiflow.export.verify import check_fp32, check_int8
from classiflow.layout import Layout
from classiflow.models import build_model
from classiflow.stages import export as export_stage
from classiflow.stages import train as train_stage
from classiflow.tensors import WithPreprocessing
from tests.imagegen import CLASSES, draw, write_image_folder

SIZE = 16
FAST = {"latency_repeats": 3, "throughput_batch": 8, "calibration_images": 32, "threads": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    images = np.stack([np.asarray(draw(CLASSES[y], SIZE, rng, gray=False)) for y in labels])
    return images, labels


def _module(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model(name, 3, len(CLASSES), SIZE, width=8).eval()
    return WithPreprocessing(net, [0.2, 0.2, 0.2], [0.3, 0.3, 0.3]).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """resnet8 exported once to every format; the checks in export_model already ran on it."""
    out = tmp_path_factory.mktemp("export")
    module = _module("resnet8")
    torch.save(module.state_dict(), out / "model.pt")
    test, labels = _images(24, seed=1)
    calibration = runtime.pixels(_images(32, seed=2)[0])
    params = ExportParams(**FAST, int8_min_agreement=0.0, int8_max_accuracy_drop=100.0)
    rows = export_model(Source("trained", module, out / "model.pt"), out, params, Images(test, labels, calibration), 1)
    return out, module, {r["format"]: r for r in rows}


def _onnx(path, batch: np.ndarray) -> np.ndarray:
    return runtime.onnxruntime(path, threads=1)(batch)


def test_torchscript_and_onnx_match_eager_for_one_and_several_images(exported):
    out, module, rows = exported
    for n in (1, 5):
        x = runtime.pixels(_images(n, seed=3)[0])
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(runtime.torchscript(out / "model.ts")(x), expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(_onnx(out / "model.onnx", x), expected, atol=1e-4, rtol=0)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, outp.name) == ("pixels", "logits") and isinstance(inp.shape[0], str)
    assert not list(out.glob("*.data"))
    assert rows["torchscript"]["max_abs_diff"] <= 1e-4 and rows["onnx"]["max_abs_diff"] <= 1e-4


def test_fastnet_exports_match_eager(tmp_path):
    module = _module("fastnet")
    example = convert.example_input(3, SIZE)
    convert.to_onnx(module, example, tmp_path / "f.onnx", opset=18)
    convert.to_torchscript(module, example, tmp_path / "f.ts")
    x = runtime.pixels(_images(3, seed=4)[0])
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_onnx(tmp_path / "f.onnx", x), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(runtime.torchscript(tmp_path / "f.ts")(x[:1]), expected[:1], atol=1e-4, rtol=0)


def test_int8_files_are_smaller_and_mostly_agree(exported):
    out, _, rows = exported
    fp32 = rows["onnx"]["bytes"]
    assert rows["onnx-int8-static"]["bytes"] < 0.7 * fp32
    assert rows["onnx-int8-dynamic"]["bytes"] <= fp32  # conv nets: only the classifier head is quantized
    assert rows["onnx-int8-static"]["agreement"] >= 0.8 and rows["onnx-int8-dynamic"]["agreement"] >= 0.8
    x = runtime.pixels(_images(5, seed=5)[0])
    assert _onnx(out / "model.int8.onnx", x).shape == (5, len(CLASSES))
    assert {r["file"] for r in rows.values()} == {p.name for p in out.iterdir()}


def test_int8_checks_name_the_file_and_the_numbers():
    reference = np.eye(3)[[0, 1, 2, 0, 1, 2, 0, 1, 2, 0]]
    labels = reference.argmax(1)
    worse = reference.copy()
    worse[:2] = np.eye(3)[[2, 2]]
    with pytest.raises(ClassiflowError, match=r"m\.int8\.onnx: test accuracy 80\.00% vs 100\.00%.*20\.00 points"):
        check_int8("m.int8.onnx", reference, worse, labels, max_drop=0.5, min_agreement=0.0)
    with pytest.raises(ClassiflowError, match=r"on 80\.00% of 10 test images < export\.int8_min_agreement 99%"):
        check_int8("m.int8.onnx", reference, worse, labels, max_drop=100.0, min_agreement=0.99)


def test_params_are_validated():
    assert ExportParams().int8_modes == ("dynamic", "static")
    with pytest.raises(ValidationError, match="add 'onnx' to formats"):
        ExportParams(formats=["torchscript"], int8="static")
    with pytest.raises(ValidationError):
        ExportParams(formats=["tflite"])
    with pytest.raises(ValidationError):
        ExportParams(colour=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    folder = write_image_folder(root / "shapes", per_class=20, size=SIZE)
    layout = Layout.at(root / "p")
    download(str(folder), layout.raw)
    prepare(layout.raw, layout.prepared, DataParams(image_size=SIZE, val_fraction=0.2))
    params = parse_params(
        {"model": {"name": "resnet8", "width": None}, "train": {"epochs": 1, "batch_size": 16, "device": "cpu"}}
    )
    train_stage.run(layout, params)
    return layout, params


def test_the_stage_exports_trained_and_pruned_models_with_a_report(trained):
    layout, params = trained
    shutil.copy(layout.model, layout.pruned_model)  # a plain checkpoint is a valid "pruned" model
    try:
        settings = ExportParams(
            **FAST, formats=["onnx"], int8="static", int8_min_agreement=0.0, int8_max_accuracy_drop=100.0
        )
        metrics = export_stage.run(layout, params, settings)
    finally:
        layout.pruned_model.unlink()
    files = sorted(p.name for p in layout.export_dir.iterdir())
    assert files == ["model.int8.onnx", "model.onnx", "preprocessing.json", "pruned.int8.onnx", "pruned.onnx"]
    pre = read_json(layout.export_dir / "preprocessing.json")
    assert pre["input"]["name"] == "pixels" and pre["input"]["shape"] == ["batch", 3, SIZE, SIZE]
    assert pre["classes"] == list(CLASSES) and len(pre["mean"]) == 3 and pre["image_size"] == SIZE
    assert set(metrics) == {"threads", "trained", "pruned"}
    assert set(metrics["pruned"]) == {"pytorch", "onnx", "onnx-int8-static"}
    assert read_json(layout.export_metrics) == metrics
    report = layout.export_report.read_text()
    assert report.count("| trained |") == 3 and "ONNX Runtime int8 static" in report and "batch-8 img/s" in report


def test_a_failed_check_leaves_no_export_behind(trained, monkeypatch):
    layout, params = trained
    shutil.rmtree(layout.export_dir, ignore_errors=True)

    def corrupted(module, example, path):
        with torch.no_grad(), convert.quiet_jit():
            module.net.head.bias.add_(1.0)
            try:
                torch.jit.save(torch.jit.trace(module, example), str(path))
            finally:
                module.net.head.bias.sub_(1.0)

    monkeypatch.setattr(pipeline, "to_torchscript", corrupted)
    settings = ExportParams(**FAST, formats=["torchscript"], int8="none")
    with pytest.raises(ClassiflowError, match=r"model\.ts: max abs logit difference 1 .* exceeds export\.atol 0\.0001"):
        export_stage.run(layout, params, settings)
    assert not layout.export_dir.exists()
    assert not [p for p in layout.export_dir.parent.iterdir() if p.name.startswith(".export")]


def test_exporting_without_a_trained_model_says_to_train(tmp_path):
    with pytest.raises(ClassiflowError, match="no trained model; run the train stage first"):
        export_stage.run(Layout.at(tmp_path), parse_params({}), ExportParams())


def test_fp32_tolerance_scales_with_the_logits():
    huge = np.array([[1.7e9, -9.6e8]], dtype=np.float32)
    assert check_fp32("f", huge, huge + np.float32(128), 1e-4) == 128  # float32 rounding at 1e9
    with pytest.raises(ClassiflowError, match=r"difference 2e\+06 .* x the largest logit 1\.7e\+09"):
        check_fp32("f", huge, huge + np.float32(2e6), 1e-4)
    with pytest.raises(ClassiflowError, match=r"difference 0\.001 .* export\.atol 0\.0001$"):
        check_fp32("f", np.array([[0.5, 0.25]]), np.array([[0.501, 0.25]]), 1e-4)
