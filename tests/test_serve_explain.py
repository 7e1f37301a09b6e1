"""POST /explain: a Grad-CAM heat map of the served model, equal to the library's Grad-CAM of the trained
network; a clear 501 where the server cannot explain, a 422 for a class the model does not have."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from classiflow.config import ServeParams
from classiflow.explain import WEIGHTS_FILE, grad_cam, load_explainable
from classiflow.serving import explainer as explainer_module
from classiflow.serving import images
from classiflow.serving.app import create_app
from classiflow.serving.model import LoadedModel, load_model_dir
from classiflow.tensors import WithPreprocessing
from tests.serve_fixtures import CLASSES, SIZE, colour_image, encode, export_model_dir, gray_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PNG = encode(colour_image(24, seed=5), "PNG")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_model_dir(tmp_path_factory.mktemp("explain") / "rgb", 3)


def _client(model: LoadedModel) -> TestClient:
    return TestClient(create_app(lambda: model, ServeParams(max_wait_ms=0.0), model=model))


def _explain(model: LoadedModel, body: bytes = PNG, **params):
    with _client(model) as client:
        return client.post("/explain", files={"file": ("a.png", body, "image/png")}, params=params)


def test_the_heat_map_is_the_trained_networks_grad_cam_of_the_top_class(exported):
    model = load_model_dir(exported, name="shapes", version="3", threads=1)
    response = _explain(model)
    assert response.status_code == 200, response.text
    body = response.json()
    image = images.decode(PNG, SIZE, 3)
    probs = model.predict(image[None])[0]
    top = int(np.argmax(probs))
    assert (body["class"], body["method"], body["decision"]) == (CLASSES[top], "grad-cam", CLASSES[top])
    assert body["probability"] == pytest.approx(float(probs[top]), abs=1e-6)
    assert body["predictions"][0]["class"] == CLASSES[top]
    heat = np.asarray(body["heatmap"])
    assert heat.shape == (SIZE, SIZE) and heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)

    import json

    spec = json.loads((exported / "preprocessing.json").read_text())
    net = WithPreprocessing(load_explainable(exported, spec["explain"]), spec["mean"], spec["std"]).eval()
    pixels = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32))[None]
    assert net(pixels).argmax(1).item() == top  # the rebuilt network is the exported one
    expected = grad_cam(net, pixels, torch.tensor([top]))[0]
    np.testing.assert_allclose(heat, expected, atol=1e-3)
    assert body["layer"] == spec["explain"]["layer"] and body["layer"].startswith("features")

    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay"].split(",", 1)[1])))
    assert (overlay.format, overlay.size, overlay.mode) == ("PNG", (SIZE, SIZE), "RGB")


def test_a_named_class_is_explained_and_an_unknown_one_refused(exported):
    model = load_model_dir(exported, threads=1)
    named = _explain(model, **{"class": "triangle"})
    assert named.status_code == 200, named.text
    probs = model.predict(images.decode(PNG, SIZE, 3)[None])[0]
    assert named.json()["class"] == "triangle"
    assert named.json()["probability"] == pytest.approx(float(probs[CLASSES.index("triangle")]), abs=1e-6)
    unknown = _explain(model, **{"class": "hexagon"})
    assert unknown.status_code == 422
    assert unknown.json()["kind"] == "unknown_class" and "circle, square, triangle" in unknown.json()["detail"]


def test_a_gray_model_is_explained_on_a_colour_upload(tmp_path):
    model = load_model_dir(export_model_dir(tmp_path / "gray", 1, seed=2), threads=1)
    body = _explain(model, encode(colour_image(30), "PNG")).json()
    assert np.asarray(body["heatmap"]).shape == (SIZE, SIZE)
    assert _explain(model, encode(gray_image(), "PNG")).status_code == 200


def test_without_weights_the_server_says_it_cannot_explain(tmp_path):
    model = load_model_dir(export_model_dir(tmp_path / "plain", 3, explain=False), threads=1)
    with _client(model) as client:
        meta = client.get("/metadata").json()
        refused = client.post("/explain", files={"file": ("a.png", PNG, "image/png")})
        still = client.post("/predict", files={"file": ("a.png", PNG, "image/png")})
    assert meta["explain"] == {"available": False, "detail": model.explain_unavailable}
    assert refused.status_code == 501 and refused.json()["kind"] == "explain_unavailable"
    assert "without weights" in refused.json()["detail"]
    assert still.status_code == 200  # predictions do not depend on it


def test_missing_weights_file_or_torch_is_named(exported, tmp_path, monkeypatch):
    import json
    import shutil

    copy = shutil.copytree(exported, tmp_path / "copy")
    (copy / WEIGHTS_FILE).unlink()
    spec = json.loads((copy / "preprocessing.json").read_text())
    assert WEIGHTS_FILE in explainer_module.unavailable(copy, spec)
    assert explainer_module.unavailable(exported, spec) is None
    monkeypatch.setattr(explainer_module.importlib.util, "find_spec", lambda name: None)
    assert "PyTorch" in explainer_module.unavailable(exported, spec)


def test_a_damaged_weights_file_is_a_501_not_a_crash(exported, tmp_path):
    import shutil

    copy = shutil.copytree(exported, tmp_path / "damaged")
    (copy / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    response = _explain(load_model_dir(copy, threads=1))
    assert response.status_code == 501 and WEIGHTS_FILE in response.json()["detail"]


def test_jet_matches_matplotlib():
    from matplotlib import colormaps

    values = np.arange(256) / 255  # the centres of matplotlib's 256-entry table
    expected = (255 * colormaps["jet"](values)[:, :3]).astype(np.uint8)
    assert np.abs(explainer_module.jet(values).astype(int) - expected.astype(int)).max() <= 1
