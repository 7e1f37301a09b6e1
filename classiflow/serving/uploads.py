"""Reading images out of a request: one (multipart field ``file`` or the raw body) or a batch (``files``).

Starlette's multipart parser is given limits of its own (files per request, size of plain fields), and its
errors become named refusals: "too many files" is a batch over the limit (413), anything else a malformed
body (400). The body size limit itself is enforced while reading, by ``BodyLimitMiddleware``.
"""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from classiflow.serving.errors import ApiError

RAW_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/jpg", "image/bmp", "image/x-ms-bmp", "image/webp", "application/octet-stream"}
)
ACCEPTED_TYPES = (
    "multipart/form-data (field 'file'), image/png, image/jpeg, image/bmp, image/webp or application/octet-stream"
)
MAX_FIELD_BYTES = 64 * 1024  # plain (non-file) multipart fields: nothing we read needs more


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _form(request: Request, max_files: int, too_many: str) -> FormData:
    try:
        return await request.form(max_files=max_files, max_fields=16, max_part_size=MAX_FIELD_BYTES)
    except ApiError:
        raise
    except HTTPException as err:  # starlette's MultiPartException, re-raised as a 400
        if "Too many files" in str(err.detail):
            raise ApiError(413, "too_many_images", too_many) from None
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {err.detail}") from None


async def read_one(request: Request) -> bytes:
    media = media_type(request)
    if media == "multipart/form-data":
        form = await _form(request, 1, "send one image per /predict request; use /predict/batch for several")
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(422, "no_file", "the multipart body has no file field named 'file'")
            return await upload.read()
        finally:
            await form.close()
    if media in RAW_TYPES:
        return await request.body()
    if not media:
        raise ApiError(415, "unsupported_media_type", f"no Content-Type; send {ACCEPTED_TYPES}")
    raise ApiError(415, "unsupported_media_type", f"Content-Type {media} is not accepted; send {ACCEPTED_TYPES}")


async def read_batch(request: Request, limit: int) -> list[tuple[str | None, bytes]]:
    """(filename, bytes) per ``files`` part, in order; every part must be a file upload."""
    if media_type(request) != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with one 'files' field per image")
    form = await _form(request, limit, f"more than {limit} images in one batch (serve.max_batch_images)")
    try:
        parts = form.getlist("files")
        if not parts:
            raise ApiError(422, "empty_batch", "empty batch: send one or more images in the multipart field 'files'")
        plain = [i for i, p in enumerate(parts) if not isinstance(p, UploadFile)]
        if plain:
            detail = f"part {plain[0]} of 'files' is a plain field, not a file upload (give it a filename)"
            raise ApiError(422, "no_file", detail)
        return [(p.filename, await p.read()) for p in parts]
    finally:
        await form.close()
