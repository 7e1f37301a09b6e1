"""The upload page at GET / in a real headless Chromium, against a real server on a real exported model.

What a user sees must be what the API says: the bars are compared with the JSON of POST /predict for the same
bytes, and a refused file shows the API's own ``detail``. The browser is the system Chromium
(``apt-get install chromium``) driven by Playwright; Playwright's own browser download is never used, so the
module is skipped where either is missing.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from classiflow.config import ServeParams
from classiflow.serving.app import create_app
from classiflow.serving.model import LoadedModel, load_model_dir
from tests.serve_fixtures import CLASSES, colour_image, encode, export_model_dir, gray_image
from tests.serve_http import ServerThread

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no system Chromium at /usr/bin/chromium"),
    pytest.mark.usefixtures("one_torch_thread"),
]
sync_api = pytest.importorskip("playwright.sync_api")

TOKEN = "page-test-token"
PNG = encode(colour_image(24, seed=3), "PNG")
TIMEOUT_MS = 15_000


def post(url: str, data: bytes, content_type: str, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def multipart(name: str, filename: str, data: bytes, ctype: str) -> tuple[bytes, str]:
    """The body a browser's FormData sends for one file field."""
    boundary = "pagetestboundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
    body = f"{head}Content-Type: {ctype}\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> LoadedModel:
    directory = export_model_dir(tmp_path_factory.mktemp("page") / "rgb", 3)
    return load_model_dir(directory, name="shapes", version="7", metrics={"test_accuracy": 0.5}, threads=1)


def _serve(model: LoadedModel, token: str | None = None) -> ServerThread:
    return ServerThread(create_app(lambda: model, ServeParams(max_wait_ms=0.0), token=token, model=model))


@pytest.fixture(scope="module")
def server(model) -> Iterator[ServerThread]:
    with _serve(model) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser) -> Iterator:
    context = browser.new_context()
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    yield tab
    context.close()


def bars(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#result .bar",
        """rows => rows.map(r => ({
            cls: r.querySelector('.bar-label').textContent,
            text: r.querySelector('.bar-value').textContent,
            probability: Number(r.dataset.probability),
            width: parseFloat(r.querySelector('.bar-fill').style.width),
        }))""",
    )


def test_page_shows_the_served_model(page, server):
    page.goto(server.url + "/")
    sync_api.expect(page.locator("#model-name")).to_have_text("shapes")
    sync_api.expect(page.locator("#model-version")).to_have_text("7")
    sync_api.expect(page.locator("#model-classes")).to_contain_text(f"{len(CLASSES)} classes")
    assert page.title() == "classiflow: shapes"
    sync_api.expect(page.locator("#error")).to_be_hidden()
    sync_api.expect(page.locator("#result")).to_be_hidden()


def test_uploaded_png_gives_the_bars_the_api_returns(page, server):
    page.goto(server.url + "/")
    # found by its accessible label, as a screen reader would
    page.get_by_label(re.compile("Drag an image here")).set_input_files(
        files=[{"name": "shape.png", "mimeType": "image/png", "buffer": PNG}]
    )
    sync_api.expect(page.locator("#result")).to_be_visible()
    sync_api.expect(page.locator("#preview")).to_be_visible()
    shown = bars(page)

    status, api = post(server.url + "/predict?top_k=5", *multipart("file", "shape.png", PNG, "image/png"))
    assert status == 200
    expected = api["predictions"]
    assert len(shown) == len(expected) == len(CLASSES)  # top 5 of 3 classes
    assert [b["cls"] for b in shown] == [p["class"] for p in expected]
    assert [b["text"] for b in shown] == [f"{100 * p['probability']:.1f}%" for p in expected]
    for bar, p in zip(shown, expected, strict=True):
        assert bar["probability"] == pytest.approx(p["probability"], abs=1e-6)
        assert bar["width"] == pytest.approx(100 * p["probability"], abs=1e-3)
    assert [b["width"] for b in shown] == sorted((b["width"] for b in shown), reverse=True)
    sync_api.expect(page.locator("#latency")).to_contain_text("shapes v7")
    sync_api.expect(page.locator("#decision")).to_have_text(f"Answer: {api['decision']}")
    sync_api.expect(page.locator("#error")).to_be_hidden()


def test_top_k_field_limits_the_bars(page, server):
    page.goto(server.url + "/")
    page.get_by_label("Top classes").fill("2")
    page.locator("#file").set_input_files(files=[{"name": "a.png", "mimeType": "image/png", "buffer": PNG}])
    sync_api.expect(page.locator("#result .bar")).to_have_count(2)


def test_dropped_gray_image_is_classified(page, server):
    """Drag and drop: a DataTransfer holding a file, dropped on #drop (a gray image for the RGB model)."""
    gray = encode(gray_image(20, seed=5), "PNG")
    page.goto(server.url + "/")
    transfer = page.evaluate_handle(
        """b64 => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'gray.png', {type: 'image/png'}));
            return dt;
        }""",
        base64.b64encode(gray).decode(),
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    sync_api.expect(page.locator("#result .bar")).to_have_count(len(CLASSES))
    _, api = post(server.url + "/predict?top_k=5", gray, "image/png")
    assert [b["cls"] for b in bars(page)] == [p["class"] for p in api["predictions"]]


def test_text_file_shows_the_api_error(page, server):
    text = b"these are not the pixels you are looking for\n"
    page.goto(server.url + "/")
    page.locator("#file").set_input_files(files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": text}])
    error = page.locator("#error")
    sync_api.expect(error).to_be_visible()
    status, api = post(server.url + "/predict", *multipart("file", "notes.txt", text, "text/plain"))
    assert 400 <= status < 500 and api["detail"]
    sync_api.expect(error).to_contain_text(f"Error {status}")
    sync_api.expect(error).to_contain_text(api["detail"])
    sync_api.expect(page.locator("#result")).to_be_hidden()
    sync_api.expect(page.locator("#preview")).to_be_hidden()  # the browser cannot show it either
    assert error.get_attribute("role") == "alert"


def test_token_field_is_sent_as_bearer_and_kept_for_the_session(page, model):
    with _serve(model, token=TOKEN) as secured:
        page.goto(secured.url + "/")
        sync_api.expect(page.locator("#error")).to_contain_text("Error 401")
        sync_api.expect(page.locator("#model-name")).to_have_text("…")

        token = page.get_by_label("API token (optional)")
        token.fill(TOKEN)
        token.dispatch_event("change")
        sync_api.expect(page.locator("#model-name")).to_have_text("shapes")
        sync_api.expect(page.locator("#error")).to_be_hidden()

        page.reload()  # sessionStorage survives a reload of the same tab
        sync_api.expect(page.locator("#token")).to_have_value(TOKEN)
        page.locator("#file").set_input_files(files=[{"name": "a.png", "mimeType": "image/png", "buffer": PNG}])
        sync_api.expect(page.locator("#result .bar")).to_have_count(len(CLASSES))
        assert page.evaluate("sessionStorage.getItem('classiflow.token')") == TOKEN


def test_grad_cam_toggle_shows_the_apis_overlay(page, server):
    page.goto(server.url + "/")
    toggle = page.get_by_label(re.compile("Grad-CAM overlay"))
    sync_api.expect(toggle).to_be_visible()
    page.locator("#file").set_input_files(files=[{"name": "a.png", "mimeType": "image/png", "buffer": PNG}])
    sync_api.expect(page.locator("#result .bar")).to_have_count(len(CLASSES))
    sync_api.expect(page.locator("#explanation")).to_be_hidden()  # off until asked

    toggle.check()
    overlay = page.locator("#overlay")
    sync_api.expect(overlay).to_be_visible()
    _, api = post(server.url + "/explain?top_k=1", *multipart("file", "a.png", PNG, "image/png"))
    assert overlay.get_attribute("src") == api["overlay"]
    sync_api.expect(page.locator("#explain-caption")).to_contain_text(f"Evidence for {api['class']}")
    assert page.evaluate("document.getElementById('overlay').naturalWidth") == len(api["heatmap"])

    toggle.uncheck()
    sync_api.expect(page.locator("#explanation")).to_be_hidden()


def test_no_toggle_where_the_server_cannot_explain(page, tmp_path):
    directory = export_model_dir(tmp_path / "plain", 3, explain=False)
    with _serve(load_model_dir(directory, threads=1)) as plain:
        page.goto(plain.url + "/")
        sync_api.expect(page.locator("#model-name")).to_have_text("local")
        sync_api.expect(page.locator("#explain-row")).to_be_hidden()
