"""The inspection settings through the stages: imbalanced train with a balanced sampler, a normal class and a
recall policy in evaluate, its thresholds in the exported files, the served answers and the model card."""

from __future__ import annotations

import numpy as np
import pytest

from classiflow.atomic import read_json
from classiflow.checkpoint import load_checkpoint
from classiflow.config import DataParams
from classiflow.data.download import download
from classiflow.data.prepare import prepare
from classiflow.data.prepared import load_prepared
from classiflow.errors import ClassiflowError
from classiflow.export.params import ExportParams
from classiflow.layout import Layout
from classiflow.model_card import model_card
from classiflow.operating import OperatingPoint, decide
from classiflow.serving.model import load_model_dir
from classiflow.stages import augment, evaluate, export, train
from tests.conftest import shrunk_params
from tests.imagegen import write_image_folder

pytestmark = pytest.mark.integration
SIZE = 24
POLICY = {
    "evaluate.normal_class": "circle",
    "evaluate.threshold_policy": "min_recall",
    "evaluate.threshold_target": 0.9,
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspection")
    folder = write_image_folder(root / "shapes", per_class=40, size=SIZE)
    for cls in ("square", "stripes"):  # the defects: a quarter as many train images as circle
        for path in sorted((folder / cls).iterdir())[:30]:
            path.unlink()
    layout = Layout.at(root / "p")
    download(str(folder), layout.raw)
    prepare(layout.raw, layout.prepared, DataParams(image_size=SIZE, val_fraction=0.25, test_fraction=0.25))
    params = shrunk_params(
        {"model": {"name": "simplecnn", "width": None}},
        {"train.epochs": 6, "train.lr": 0.01, "train.sampler": "balanced", "train.class_weights": "balanced",
         "train.select_by": "val_balanced_accuracy", "augment.flip": False} | POLICY,
    )  # fmt: skip
    augment.run(layout, params)
    train.run(layout, params)
    evaluate.run(layout, params)
    return layout, params


def test_evaluate_chooses_thresholds_on_validation_and_reports_them_on_test(project):
    layout, _ = project
    point = read_json(layout.eval_metrics)["operating_point"]
    assert point["normal"] == "circle" and point["thresholds"]["circle"] == 0.0
    assert all(point["val"]["per_class"][c]["caught"] >= 0.9 for c in ("square", "stripes"))
    assert set(point["test"]) >= {"false_alarm", "false_alarm_ci", "uncertain", "per_class"}
    assert point["met_on_test"] == all(point["test"]["per_class"][c]["caught"] >= 0.9 for c in ("square", "stripes"))
    assert set(point["average_precision"]) == {"circle", "square", "stripes", "defect vs ok"}
    assert layout.pr_curves_png.stat().st_size > 0 and "defect vs ok" in layout.pr_curves_csv.read_text()


def test_the_exported_files_serve_the_same_answers_evaluate_scored(project):
    layout, params = project
    settings = ExportParams(latency_repeats=2, throughput_batch=8, calibration_images=16, threads=1, int8="none")
    export.run(layout, params.model_copy(update={"export": settings}))
    served = load_model_dir(layout.export_dir)
    evaluation = read_json(layout.eval_metrics)
    assert served.temperature == pytest.approx(evaluation["calibration"]["temperature"])
    point = OperatingPoint.from_dict(evaluation["operating_point"])
    assert served.operating_point == point
    data = load_prepared(layout.prepared, ("test",))
    probs = served.predict(data.images["test"])
    answers = served.decide(probs)
    recomputed = decide(probs, served.classes, point)
    assert answers == ["uncertain" if i < 0 else served.classes[i] for i in recomputed]
    caught = np.mean([a != "circle" for a, y in zip(answers, data.labels["test"], strict=True) if y == 1])
    assert caught == pytest.approx(evaluation["operating_point"]["test"]["per_class"]["square"]["caught"])


def test_the_model_card_shows_the_operating_point(project):
    layout, params = project
    _, ckpt = load_checkpoint(layout.model)
    evaluation = read_json(layout.eval_metrics)
    card = model_card("m", ckpt, params.flat(), evaluation, {"method": "none", "status": "none"}, {}, "abc")
    assert "## Operating point" in card and "`min_recall` at 0.9" in card and "False alarms on test" in card
    assert "balanced accuracy" in card and "softmax(logits / " in card


def test_a_normal_class_that_is_not_a_class_fails_before_any_work(project):
    layout, params = project
    bad = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"normal_class": "ok"})})
    with pytest.raises(ClassiflowError, match="evaluate.normal_class: 'ok' is not a class"):
        evaluate.run(layout, bad)
