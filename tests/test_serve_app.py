"""The serving API on real exported models: answers, refusals (never a 500), reloads, batching, auth, metrics."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from classiflow.config import ServeParams
from classiflow.data.imagefolder import to_channels
from classiflow.errors import ClassiflowError
from classiflow.serving import images
from classiflow.serving import state as state_module
from classiflow.serving.app import create_app
from classiflow.serving.model import LoadedModel, load_model_dir
from classiflow.serving.routes import PAGE
from tests.serve_fixtures import CLASSES, SIZE, colour_image, encode, gray_image, png_bomb, shared_exports

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dirs() -> dict[str, Path]:
    return shared_exports()


@pytest.fixture(scope="module")
def rgb(dirs) -> LoadedModel:
    return load_model_dir(dirs["rgb"], name="shapes", version="1", metrics={"test_accuracy": 0.5}, threads=1)


def _client(model: LoadedModel, **settings) -> TestClient:
    """A client of an app already serving ``model`` (the TestClient runs its lifespan inside ``with``)."""
    return TestClient(create_app(lambda: model, ServeParams(**settings), model=model))


def _metric(client: TestClient, metric: str, /, **labels) -> float:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


PNG = encode(colour_image(), "PNG")
AS_PNG = {"content-type": "image/png"}


# --- predict --------------------------------------------------------------------------------------------------


def test_predict_multipart_and_raw_body_agree_with_the_model(rgb):
    expected = rgb.predict(images.decode(PNG, SIZE, 3)[None])[0]
    with _client(rgb) as client:
        multipart = client.post("/predict", files={"file": ("a.png", PNG, "image/png")}, params={"top_k": 3})
        raw = client.post("/predict", content=PNG, headers=AS_PNG, params={"top_k": 3})
        octet = client.post("/predict", content=PNG, headers={"content-type": "application/octet-stream"})
        top1 = client.post("/predict", content=PNG, headers=AS_PNG, params={"top_k": 1})
        many = client.post("/predict", content=PNG, headers=AS_PNG, params={"top_k": 50})
    for response in (multipart, raw, octet, top1, many):
        assert response.status_code == 200, response.text
    body = multipart.json()
    assert (body["model"], body["version"]) == ("shapes", "1")
    assert body["latency_ms"] > 0
    assert raw.json()["predictions"] == body["predictions"]
    assert body["decision"] == body["predictions"][0]["class"]  # no operating point: the top class
    probs = {p["class"]: p["probability"] for p in body["predictions"]}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert [probs[c] for c in CLASSES] == pytest.approx(expected.tolist(), abs=1e-6)
    assert [p["probability"] for p in body["predictions"]] == sorted(probs.values(), reverse=True)
    assert len(top1.json()["predictions"]) == 1 and top1.json()["predictions"][0] == body["predictions"][0]
    assert len(octet.json()["predictions"]) == 3 and len(many.json()["predictions"]) == 3


def test_a_large_image_is_decoded_off_the_event_loop_and_resized_like_training(rgb):
    big = encode(colour_image(size=400, seed=9), "JPEG")
    assert images.declared_pixels(big) > state_module.INLINE_PIXELS
    expected = rgb.predict(images.decode(big, SIZE, 3)[None])[0]
    with _client(rgb) as client:
        response = client.post("/predict", content=big, headers={"content-type": "image/jpeg"}, params={"top_k": 3})
    assert response.status_code == 200, response.text
    got = {p["class"]: p["probability"] for p in response.json()["predictions"]}
    assert [got[c] for c in CLASSES] == pytest.approx(expected.tolist(), abs=1e-6)


def test_batch_answers_each_image_and_isolates_a_bad_one(rgb):
    jpeg = encode(colour_image(seed=5), "JPEG")
    files = [("files", ("a.png", PNG, "image/png")), ("files", ("b.txt", b"hello", "text/plain"))]
    files.append(("files", ("c.jpg", jpeg, "image/jpeg")))
    with _client(rgb) as client:
        response = client.post("/predict/batch", files=files, params={"top_k": 2})
        single = client.post("/predict", content=jpeg, headers={"content-type": "image/jpeg"}, params={"top_k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["failed"] == 1 and [r["index"] for r in body["results"]] == [0, 1, 2]
    ok, bad, jpg = body["results"]
    assert len(ok["predictions"]) == 2 and "error" not in ok
    assert "predictions" not in bad and "PNG, JPEG, BMP or WebP" in bad["error"] and bad["filename"] == "b.txt"
    assert jpg["predictions"] == single.json()["predictions"]


def _truncated_jpeg() -> bytes:
    data = encode(colour_image(size=64, seed=2), "JPEG", quality=90)
    return data[: len(data) // 2]


BAD_INPUTS = [
    # (name, request kwargs, status, text in the detail)
    ("not an image", {"content": b"hello, world", "headers": {"content-type": "image/png"}}, 422, "not a PNG"),
    ("truncated jpeg", {"content": _truncated_jpeg(), "headers": {"content-type": "image/jpeg"}}, 422, "truncated"),
    ("gif", {"files": {"file": ("a.gif", encode(colour_image(), "GIF"), "image/gif")}}, 422, "GIF images"),
    ("tiff", {"content": encode(colour_image(), "TIFF"), "headers": {"content-type": "image/png"}}, 422, "TIFF"),
    ("bomb", {"content": png_bomb(), "headers": {"content-type": "image/png"}}, 422, "too large"),
    ("empty body", {"content": b"", "headers": {"content-type": "image/png"}}, 422, "empty"),
    ("text/plain", {"content": PNG, "headers": {"content-type": "text/plain"}}, 415, "text/plain"),
    ("image/gif type", {"content": PNG, "headers": {"content-type": "image/gif"}}, 415, "image/gif"),
    ("no content type", {"content": PNG}, 415, "Content-Type"),
    ("no file field", {"files": {"other": ("a.png", PNG, "image/png")}}, 422, "'file'"),
    ("two files", {"files": [("file", ("a.png", PNG)), ("file", ("b.png", PNG))]}, 413, "/predict/batch"),
    ("bad multipart", {"content": b"--x\r\nnonsense", "headers": {"content-type": "multipart/form-data"}}, 400, ""),
    ("over the limit", {"content": b"\0" * 5000, "headers": {"content-type": "image/png"}}, 413, "limit"),
    ("chunked over", {"content": iter([b"\0" * 3000] * 3), "headers": {"content-type": "image/png"}}, 413, "limit"),
]


@pytest.mark.parametrize(("name", "kwargs", "status", "text"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_with_a_reason(rgb, name, kwargs, status, text):
    with _client(rgb, max_body_bytes=4096) as client:  # raises if the app itself failed (a 500)
        response = client.post("/predict", **kwargs)
        assert response.status_code == status, response.text
        body = response.json()
        assert text in body["detail"] and body["kind"]
        assert _metric(client, "classiflow_errors_total", kind=body["kind"]) == 1
        assert client.post("/predict", content=PNG, headers=AS_PNG).status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "status", "text"),
    [
        ({"files": {"other": ("a.png", PNG)}}, 422, "empty batch"),
        ({"files": [("files", (f"{i}.png", PNG)) for i in range(5)]}, 413, "more than 4 images"),
        ({"content": PNG, "headers": AS_PNG}, 415, "multipart"),
        ({"data": {"files": "a.png"}, "files": {"x": ("a.png", PNG)}}, 422, "not a file upload"),
        ({"files": {"files": ("a.png", PNG)}, "params": {"top_k": 0}}, 422, "top_k"),
    ],
    ids=["empty", "over the limit", "raw body", "plain field", "bad top_k"],
)
def test_bad_batches_are_refused(rgb, kwargs, status, text):
    with _client(rgb, max_batch_images=4) as client:
        response = client.post("/predict/batch", **kwargs)
    assert response.status_code == status and text in response.json()["detail"], response.text


def test_gray_and_colour_images_are_converted_to_the_models_channels(dirs, rgb):
    gray_model = load_model_dir(dirs["gray"], version="g1")
    gray_png, colour_png = encode(gray_image(), "PNG"), PNG
    with _client(gray_model) as client:
        to_gray = client.post("/predict", content=colour_png, headers=AS_PNG, params={"top_k": 3})
    with _client(rgb) as client:
        to_rgb = client.post("/predict", content=gray_png, headers=AS_PNG, params={"top_k": 3})
    assert to_gray.status_code == 200 and to_rgb.status_code == 200
    luminance = to_channels(images.decode(colour_png, SIZE, 3)[None], 1)
    gray_as_rgb = np.repeat(images.decode(gray_png, SIZE, 1)[None], 3, axis=-1)
    for response, model, batch in ((to_gray, gray_model, luminance), (to_rgb, rgb, gray_as_rgb)):
        got = {p["class"]: p["probability"] for p in response.json()["predictions"]}
        assert [got[c] for c in CLASSES] == pytest.approx(model.predict(batch)[0].tolist(), abs=1e-6)


# --- auth, readiness, metadata, metrics ----------------------------------------------------------------------


def test_the_token_guards_everything_but_health_and_the_page(rgb):
    app = create_app(lambda: rgb, ServeParams(), token="s3cret", model=rgb)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/").status_code == 200
        for path in ("/ready", "/metadata", "/metrics", "/openapi.json"):
            assert client.get(path).status_code == 401
        wrong = client.post("/predict", content=PNG, headers={"content-type": "image/png", "authorization": "Bearer x"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        auth = {"authorization": "Bearer s3cret"}
        right = client.post("/predict", content=PNG, headers={"content-type": "image/png", **auth})
        assert right.status_code == 200
        assert client.get("/metadata", headers=auth).status_code == 200
    with _client(rgb) as client:
        assert client.get("/metadata").status_code == 200


def test_ready_only_once_the_model_has_loaded(dirs):
    gate = threading.Event()

    def slow_load() -> LoadedModel:
        gate.wait(30)
        return load_model_dir(dirs["rgb"], version="7")

    app = create_app(slow_load, ServeParams())
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 503
        for response in (
            client.get("/metadata"),
            client.post("/predict", content=PNG, headers=AS_PNG),
        ):
            assert response.status_code == 503 and response.json()["kind"] == "not_ready"
        gate.set()
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/ready").json() == {"ready": True, "model": "local", "version": "7"}


def test_a_failed_first_load_is_reported_by_ready():
    def broken() -> LoadedModel:
        raise ClassiflowError("models:/nope@champion: no such registered model")

    with TestClient(create_app(broken, ServeParams())) as client:
        deadline = time.monotonic() + 10
        while "nope" not in client.get("/ready").text and time.monotonic() < deadline:
            time.sleep(0.02)
        response = client.get("/ready")
        assert response.status_code == 503 and "no such registered model" in response.json()["detail"]


def test_metadata_describes_model_input_and_limits(rgb):
    with _client(rgb, max_batch=8, max_wait_ms=3.0) as client:
        meta = client.get("/metadata").json()
    assert meta["classes"] == CLASSES and (meta["name"], meta["version"]) == ("shapes", "1")
    assert meta["metrics"] == {"test_accuracy": 0.5} and meta["runtime"] == "onnxruntime"
    assert meta["input"]["image_size"] == SIZE and meta["input"]["channels"] == 3
    assert meta["input"]["model_input"]["layout"] == "NCHW" and meta["input"]["formats"] == [
        "PNG",
        "JPEG",
        "BMP",
        "WEBP",
    ]
    assert meta["batching"] == {"max_batch": 8, "max_wait_ms": 3.0}
    assert meta["limits"]["max_body_bytes"] == ServeParams().max_body_bytes


def test_metrics_count_requests_errors_and_the_served_model(rgb):
    with _client(rgb) as client:
        for _ in range(3):
            client.post("/predict", content=PNG, headers=AS_PNG)
        client.post("/predict", content=b"junk", headers=AS_PNG)
        client.get("/no/such/path")
        response = client.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        assert _metric(client, "classiflow_requests_total", endpoint="/predict", status="200") == 3
        assert _metric(client, "classiflow_requests_total", endpoint="/predict", status="422") == 1
        assert _metric(client, "classiflow_requests_total", endpoint="other", status="404") == 1
        assert _metric(client, "classiflow_errors_total", kind="bad_image") == 1
        assert _metric(client, "classiflow_request_latency_seconds_count", endpoint="/predict") == 4
        assert _metric(client, "classiflow_images_total") == 3
        assert _metric(client, "classiflow_batch_size_count") == 3
        assert _metric(client, "classiflow_model_info", name="shapes", version="1", runtime="onnxruntime") == 1


def test_the_page_and_the_openapi_document_are_served(rgb):
    with _client(rgb) as client:
        page = client.get("/")
        schema = client.get("/openapi.json")
        missing = client.get("/nowhere")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    if PAGE.exists():
        assert page.text == PAGE.read_text(encoding="utf-8")
    assert schema.status_code == 200
    body = schema.json()["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/png", "application/octet-stream"} <= set(body)
    assert missing.status_code == 404 and missing.json()["kind"] == "http_404"


# --- reloads --------------------------------------------------------------------------------------------------


def test_reload_swaps_whole_models_and_a_failed_one_keeps_the_old(dirs):
    outcomes = iter(["1", "2", ClassiflowError("models:/shapes@champion: registry unreachable")])

    def load() -> LoadedModel:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return load_model_dir(dirs["rgb"], name="shapes", version=outcome)

    with TestClient(create_app(load, ServeParams())) as client:
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        headers = {"content-type": "image/png"}
        assert client.post("/predict", content=PNG, headers=headers).json()["version"] == "1"
        swapped = client.post("/reload")
        assert swapped.status_code == 200, swapped.text
        assert swapped.json() | {"runtime": None} == {
            "model": "shapes",
            "version": "2",
            "runtime": None,
            "previous_version": "1",
            "changed": True,
        }
        assert client.post("/predict", content=PNG, headers=headers).json()["version"] == "2"
        failed = client.post("/reload")
        assert failed.status_code == 503 and "registry unreachable" in failed.json()["detail"]
        assert failed.json()["serving"] == {"model": "shapes", "version": "2"}
        assert client.get("/ready").status_code == 200
        assert client.post("/predict", content=PNG, headers=headers).json()["version"] == "2"
        assert _metric(client, "classiflow_reloads_total", outcome="failed") == 1
        assert _metric(client, "classiflow_model_info", version="2") == 1
        assert _metric(client, "classiflow_model_info", version="1") == 0


def test_polling_loads_a_new_version_when_the_alias_moves(dirs, rgb):
    latest = {"version": "1"}
    app = create_app(
        lambda: load_model_dir(dirs["rgb"], name="shapes", version=latest["version"]),
        ServeParams(poll_seconds=0.05),
        latest_version=lambda: latest["version"],
        model=rgb,
    )
    with TestClient(app) as client:
        time.sleep(0.2)
        assert client.get("/ready").json()["version"] == "1"
        latest["version"] = "2"
        deadline = time.monotonic() + 30
        while client.get("/ready").json()["version"] != "2" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/ready").json()["version"] == "2"


# --- batching -------------------------------------------------------------------------------------------------


def test_concurrent_requests_share_model_calls(rgb):
    with _client(rgb, max_batch=8, max_wait_ms=1000.0) as client:

        def one(_: int) -> int:
            return client.post("/predict", content=PNG, headers=AS_PNG).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(one, range(8)))
        assert statuses == [200] * 8
        calls = _metric(client, "classiflow_batch_size_count")
        assert _metric(client, "classiflow_batch_size_sum") == 8
        assert calls < 8  # at least one model call took more than one image
