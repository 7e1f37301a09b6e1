"""Export: TorchScript and ONNX files that compute what PyTorch computes, checked int8 files, and the stage."""

import shutil

import numpy as np
import onnxruntime
import pytest
import torch
from pydantic import ValidationError

from classiflow.atomic import read_json, write_json
from classiflow.checkpoint import load_checkpoint
from classiflow.config import DataParams
from classiflow.data.download import download
from classiflow.data.prepare import prepare
from classiflow.errors import ClassiflowError
from classiflow.explain import load_explainable
from classiflow.export import convert, pipeline, runtime
from classiflow.export.params import ExportParams
from classiflow.export.pipeline import Images, Source, export_model
from classiflow.export.verify import Int8CheckFailed, check_fp32, check_int8, decided
from classiflow.layout import Layout
from classiflow.models import build_model
from classiflow.stages import augment as augment_stage
from classiflow.stages import evaluate as evaluate_stage
from classiflow.stages import export as export_stage
from classiflow.stages import train as train_stage
from classiflow.tensors import WithPreprocessing, mirror_average
from tests.conftest import shrunk_params
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
    assert {r["status"] for fmt, r in rows.items() if fmt != "pytorch"} == {"verified"}
    x = runtime.pixels(_images(5, seed=5)[0])
    assert _onnx(out / "model.int8.onnx", x).shape == (5, len(CLASSES))
    assert {r["file"] for r in rows.values()} == {p.name for p in out.iterdir()}


def test_int8_checks_name_the_file_and_the_numbers():
    reference = 5 * np.eye(3)[[0, 1, 2, 0, 1, 2, 0, 1, 2, 0]]
    labels = reference.argmax(1)
    worse = reference.copy()
    worse[:2] = 5 * np.eye(3)[[2, 2]]
    with pytest.raises(Int8CheckFailed, match=r"m\.int8\.onnx: test accuracy 80\.00% vs 100\.00%.*20\.00 points") as e:
        check_int8("m.int8.onnx", reference, worse, labels, max_drop=0.5, min_agreement=0.0, tie_margin=0.05)
    assert e.value.measured["accuracy"] == pytest.approx(0.8) and e.value.measured["decided_images"] == 10
    with pytest.raises(ClassiflowError, match=r"on 80\.00% of the 10 test images PyTorch decides .* < export"):
        check_int8("m.int8.onnx", reference, worse, labels, max_drop=100.0, min_agreement=0.99, tie_margin=0.05)


def test_a_drop_of_exactly_the_budget_passes():
    """37.2% -> 36.7% on 1,000 images is 5 images, 0.5 points: in floats 100 * (0.372 - 0.367) is above 0.5."""
    labels = np.arange(1000) % 10
    reference = 5 * np.eye(10)[np.where(np.arange(1000) < 372, labels, (labels + 1) % 10)]
    worse = reference.copy()
    worse[:5] = 5 * np.eye(10)[(labels[:5] + 1) % 10]
    checks = check_int8("m.int8.onnx", reference, worse, labels, max_drop=0.5, min_agreement=0.99, tie_margin=0.05)
    assert checks["accuracy_drop_points"] == 0.5 and checks["accuracy"] == pytest.approx(0.367)


def test_int8_agreement_leaves_out_pytorchs_near_ties():
    """Flips where PyTorch's own top two are within the margin are not disagreements; flips elsewhere are."""
    reference = np.array([[2.0, 1.99, 0.0]] * 4 + [[5.0, 0.0, 0.0]] * 6)
    labels = np.zeros(10, dtype=int)
    flipped_ties = reference.copy()
    flipped_ties[:2, 1] += 0.02  # two near-ties tip over to class 1
    checks = check_int8("t.onnx", reference, flipped_ties, labels, max_drop=100.0, min_agreement=0.99, tie_margin=0.05)
    assert checks["agreement"] == pytest.approx(0.8) and checks["decided_agreement"] == 1.0
    assert checks["decided_images"] == 6 and decided(reference, 0.0).all()
    flipped_clear = reference.copy()
    flipped_clear[4, 1] = 9.0
    with pytest.raises(Int8CheckFailed, match=r"83\.33% of the 6 test images"):
        check_int8("t.onnx", reference, flipped_clear, labels, max_drop=100.0, min_agreement=0.99, tie_margin=0.05)


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
    params = shrunk_params({"model": {"name": "resnet8", "width": None}})
    for stage in (augment_stage, train_stage, evaluate_stage):
        stage.run(layout, params)
    return layout, params


def test_the_stage_exports_trained_and_pruned_models_with_a_report(trained):
    layout, params = trained
    shutil.copy(layout.model, layout.pruned_model)  # a plain checkpoint is a valid "pruned" model
    try:
        settings = ExportParams(
            **FAST, formats=["onnx"], int8="static", int8_min_agreement=0.0, int8_max_accuracy_drop=100.0
        )
        metrics = export_stage.export(layout, settings)
    finally:
        layout.pruned_model.unlink()
    files = sorted(p.name for p in layout.export_dir.iterdir())
    assert files == [
        "model.int8.onnx", "model.onnx", "model.safetensors", "preprocessing.json", "pruned.int8.onnx", "pruned.onnx"
    ]  # fmt: skip
    pre = read_json(layout.export_dir / "preprocessing.json")
    net, payload = load_checkpoint(layout.model)
    assert pre["explain"]["weights"] == "model.safetensors" and pre["explain"]["architecture"] == payload["model"]
    rebuilt, x = load_explainable(layout.export_dir, pre["explain"]), torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))  # the trained network, for /explain
    assert pre["input"]["name"] == "pixels" and pre["input"]["shape"] == ["batch", 3, SIZE, SIZE]
    assert pre["classes"] == list(CLASSES) and len(pre["mean"]) == 3 and pre["image_size"] == SIZE
    assert set(metrics) == {"threads", "tta", "trained", "pruned"}
    assert pre["files"] == {
        "trained": {"onnx": "model.onnx", "onnx-int8-static": "model.int8.onnx"},
        "pruned": {"onnx": "pruned.onnx", "onnx-int8-static": "pruned.int8.onnx"},
    }
    assert set(metrics["pruned"]) == {"pytorch", "onnx", "onnx-int8-static"}
    assert read_json(layout.export_metrics) == metrics
    report = layout.export_report.read_text()
    assert report.count("| trained |") == 3 and "ONNX Runtime int8 static" in report and "batch-8 img/s" in report


ONNX_ONLY = ["model.onnx", "model.safetensors", "preprocessing.json"]  # the weights are for /explain


def _corrupt(monkeypatch, fmt: str) -> None:
    """Make ``fmt``'s file compute logits off by 1, as a broken converter would."""
    real = {"torchscript": pipeline.to_torchscript, "onnx": pipeline.to_onnx}[fmt]

    def corrupted(module, example, path, *args):
        with torch.no_grad():
            module.net.head.bias.add_(1.0)
            try:
                real(module, example, path, *args)
            finally:
                module.net.head.bias.sub_(1.0)

    monkeypatch.setattr(pipeline, f"to_{fmt}", corrupted)


def test_a_failed_optional_file_is_left_out_and_reported(trained, monkeypatch, caplog):
    layout, params = trained
    _corrupt(monkeypatch, "torchscript")
    settings = ExportParams(**FAST, formats=["torchscript", "onnx"], int8="none")
    metrics = export_stage.export(layout, settings)
    assert sorted(p.name for p in layout.export_dir.iterdir()) == ONNX_ONLY
    row = metrics["trained"]["torchscript"]
    assert row["status"] == "rejected" and "max abs logit difference 1 " in row["reason"]
    assert metrics["trained"]["onnx"]["status"] == "verified"
    pre = read_json(layout.export_dir / "preprocessing.json")
    assert pre["files"] == {"trained": {"onnx": "model.onnx"}} and list(pre["rejected"]) == ["model.ts"]
    assert "## Left out" in layout.export_report.read_text() and "`model.ts`: model.ts: max abs" in (
        layout.export_report.read_text()
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith("export: left out model.ts: max abs logit difference")


def test_strict_or_a_failed_onnx_file_fails_and_leaves_no_export_behind(trained, monkeypatch):
    layout, params = trained
    shutil.rmtree(layout.export_dir, ignore_errors=True)
    _corrupt(monkeypatch, "torchscript")
    strict = ExportParams(**FAST, formats=["torchscript"], int8="none", strict=True)
    with pytest.raises(ClassiflowError, match=r"model\.ts: max abs logit difference 1 .* exceeds export\.atol 0\.0001"):
        export_stage.export(layout, strict)
    _corrupt(monkeypatch, "onnx")
    with pytest.raises(ClassiflowError, match=r"model\.onnx: max abs logit difference 1 "):
        export_stage.export(layout, ExportParams(**FAST, formats=["onnx"], int8="static"))
    assert not layout.export_dir.exists()
    assert not [p for p in layout.export_dir.parent.iterdir() if p.name.startswith(".export")]


def test_exporting_without_a_trained_model_says_to_train(tmp_path):
    with pytest.raises(ClassiflowError, match="no trained model; run the train stage first"):
        export_stage.export(Layout.at(tmp_path), ExportParams())


def test_fp32_tolerance_scales_with_the_logits():
    huge = np.array([[1.7e9, -9.6e8]], dtype=np.float32)
    assert check_fp32("f", huge, huge + np.float32(128), 1e-4) == 128  # float32 rounding at 1e9
    with pytest.raises(ClassiflowError, match=r"difference 2e\+06 .* x the largest logit 1\.7e\+09"):
        check_fp32("f", huge, huge + np.float32(2e6), 1e-4)
    with pytest.raises(ClassiflowError, match=r"difference 0\.001 .* export\.atol 0\.0001$"):
        check_fp32("f", np.array([[0.5, 0.25]]), np.array([[0.501, 0.25]]), 1e-4)


@pytest.mark.parametrize("shift", [0, 1])
def test_the_files_compute_the_tta_evaluate_chose(trained, tmp_path, monkeypatch, shift):
    layout, params = trained
    evaluation = read_json(layout.eval_metrics)
    monkeypatch.chdir(tmp_path)  # ORT's shape inference, failing on a TTA graph, used to write files here
    try:
        write_json(layout.eval_metrics, evaluation | {"tta": {**evaluation["tta"], "used": True, "shift": shift}})
        export_stage.export(layout, ExportParams(**FAST, formats=["onnx"], int8="both"))
    finally:
        write_json(layout.eval_metrics, evaluation)
    assert list(tmp_path.iterdir()) == []
    assert read_json(layout.export_dir / "preprocessing.json")["tta"] == ("flip+shift1" if shift else "flip")
    net, ckpt = load_checkpoint(layout.model)
    x = runtime.pixels(_images(6, seed=7)[0])
    plain = WithPreprocessing(net, ckpt["mean"], ckpt["std"]).eval()
    with torch.no_grad():
        t = torch.from_numpy(x)
        expected = mirror_average(plain(t), plain(t.flip(-1)))
        if shift:  # airbench94's mirror+translate views, written out
            padded = torch.nn.functional.pad(t, (1, 1, 1, 1), mode="reflect")
            moved = [padded[..., :SIZE, :SIZE], padded[..., 2:, 2:]]
            expected = expected / 2 + sum(mirror_average(plain(m), plain(m.flip(-1))) for m in moved) / 4
    np.testing.assert_allclose(_onnx(layout.export_dir / "model.onnx", x), expected.numpy(), atol=1e-4, rtol=0)


def test_a_rejected_pruned_model_is_neither_exported_nor_listed(trained):
    layout, params = trained
    payload = torch.load(layout.model, weights_only=True)
    payload["pruning"] = {"method": "structured", "status": "rejected", "reason": "lost 5.35 points"}
    torch.save(payload, layout.pruned_model)
    try:
        metrics = export_stage.export(layout, ExportParams(**FAST, formats=["onnx"], int8="none"))
        assert "pruned" not in metrics
        assert sorted(p.name for p in layout.export_dir.iterdir()) == ONNX_ONLY
        with pytest.raises(ClassiflowError, match="the prune stage rejected it .*lost 5.35 points"):
            export_stage.export(layout, ExportParams(**FAST, formats=["onnx"], int8="none", strict=True))
    finally:
        layout.pruned_model.unlink()
