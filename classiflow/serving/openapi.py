"""What the OpenAPI document says about bodies and answers that the routes handle by hand.

The predict routes read the request themselves (multipart or a raw image body, with limits checked while
reading), so FastAPI cannot infer their request bodies; they are declared here instead, for /docs, clients and
schemathesis. The answers are built as plain JSON for speed; their models here only document them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/webp", "application/octet-stream")
_BINARY = {"type": "string", "format": "binary"}


class Error(BaseModel):
    detail: str | list | dict = Field(description="what was wrong and what to send instead")
    kind: str = Field(description="a stable error name: bad_image, too_large, unsupported_media_type, ...")


class Prediction(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: str = Field(alias="class")
    probability: float = Field(ge=0.0, le=1.0)


class PredictResult(BaseModel):
    model: str
    version: str
    decision: str = Field(
        description="the answer: the top class, or under the model's operating point (thresholds chosen on "
        "validation) a class or 'uncertain'"
    )
    predictions: list[Prediction]
    latency_ms: float


class ExplainResult(PredictResult):
    class_: str = Field(alias="class", description="the class explained: ?class=, or the top one")
    probability: float = Field(ge=0.0, le=1.0, description="the served model's probability of that class")
    method: str = Field(description="grad-cam")
    layer: str = Field(description="the convolution whose activations the map weights")
    heatmap: list[list[float]] = Field(description="image_size x image_size values in [0, 1], rows first")
    overlay: str = Field(description="the model's input with the heat map over it, a data:image/png URL")


class BatchItem(BaseModel):
    index: int
    filename: str | None = None
    decision: str | None = Field(None, description="present when the image was classified (as for /predict)")
    predictions: list[Prediction] | None = Field(None, description="present when the image was classified")
    error: str | None = Field(None, description="present when the image was refused")


class BatchResult(BaseModel):
    model: str
    version: str
    results: list[BatchItem]
    failed: int
    latency_ms: float


def _doc(description: str) -> dict:
    return {"description": description, "model": Error}


# Shared by every route: refusals that come from the middleware before routing.
COMMON = {
    401: _doc("missing or wrong bearer token (when the server has one)"),
    413: _doc("the body is over serve.max_body_bytes"),
}
ERRORS = {
    400: _doc("malformed multipart body"),
    413: _doc("the body is over serve.max_body_bytes, or the batch has too many images"),
    415: _doc("the Content-Type is not accepted"),
    422: _doc("not a usable image (wrong format, truncated, too many pixels) or bad parameters"),
    503: _doc("no model is loaded yet"),
}
EXPLAIN_ERRORS = {
    **ERRORS,
    422: _doc("not a usable image, or ?class= names no class of the model"),
    501: _doc("this server cannot explain: no PyTorch, or the model was exported without its weights"),
}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": _BINARY}, "required": ["file"]},
            },
            **{media: {"schema": _BINARY} for media in IMAGE_TYPES},
        },
    }
}
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": _BINARY}},
                    "required": ["files"],
                },
            }
        },
    }
}
