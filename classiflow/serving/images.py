"""Uploaded bytes -> the uint8 pixels the model was trained on, or an ``ImageError`` a client can act on.

The decode is training's own (``imagefolder.decode_pil``: the same formats, 16-bit handling, RGB conversion and
resize) followed by prepare's channel conversion, so a served image meets the model exactly as a training image
did. Everything that can go wrong with untrusted bytes is refused before it costs much: the format is fixed to
PNG/JPEG/BMP/WebP when the file is opened, the pixel count is checked from the header before decoding (a tiny
PNG can declare 50,000 x 50,000 pixels), and a truncated file fails instead of being padded with grey.
"""

from __future__ import annotations

import struct
from io import BytesIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from classiflow.data.imagefolder import ALLOWED_FORMATS, TooManyPixels, decode_pil, to_channels
from classiflow.errors import ClassiflowError

__all__ = ["ALLOWED_FORMATS", "DEFAULT_MAX_PIXELS", "ImageError", "declared_pixels", "decode", "sniff"]

DEFAULT_MAX_PIXELS = 50_000_000
ACCEPTED = "PNG, JPEG, BMP or WebP"
# Leading bytes of common formats we refuse, to name them in the error instead of saying "not an image".
_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
)


class ImageError(ClassiflowError):
    """The client sent something that is not a usable image; the message says what and what to send instead."""


def sniff(data: bytes) -> str | None:
    """The name of a known format we refuse, from its signature, else None (also for the accepted formats)."""
    head = data[:16]
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"avif", b"avis"):
        return "HEIF/AVIF"
    return None


def _refuse_unknown(data: bytes) -> ImageError:
    other = sniff(data)
    if other:
        return ImageError(f"{other} images are not accepted; send a {ACCEPTED} file")
    return ImageError(f"not a {ACCEPTED} image (the data is not in any of these formats)")


def declared_pixels(data: bytes) -> int | None:
    """Width x height from the header alone (about 10 us), or None when the header is not one we read.

    Lets the server decode small images right on the event loop (a thread hop costs more than the decode)
    and send only big ones to a thread, where a slow decode cannot stall every other request.
    """
    try:
        with Image.open(BytesIO(data), formats=ALLOWED_FORMATS) as img:
            return img.width * img.height
    except Exception:  # noqa: BLE001 - only a hint; decode() reports what is wrong with the file
        return None


def decode(
    data: bytes, size: int, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS, resize: str = "squash"
) -> np.ndarray:
    """``data`` (a whole image file) -> uint8 (size, size, channels), exactly training's decode, fit to the square
    (the ``resize`` policy the model was trained with) and conversion.

    channels=1: gray images keep their values, colour images become their luminance (what prepare does to a
    data set stored as one channel); channels=3: gray images become three equal channels.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    if not data:
        raise ImageError(f"empty upload; send a {ACCEPTED} file")
    try:
        with Image.open(BytesIO(data), formats=ALLOWED_FORMATS) as img:
            rgb, _ = decode_pil(img, size, max_pixels, resize)
    except UnidentifiedImageError:
        raise _refuse_unknown(data) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"image too large to decode ({err})") from None
    except TooManyPixels as err:
        raise ImageError(f"image too large: {err}; send a smaller image") from None
    except ValueError as err:  # PIL on nonsense header values
        raise ImageError(f"not a valid {ACCEPTED} image ({err})") from None
    except (OSError, SyntaxError, EOFError) as err:
        reason = str(err).strip() or type(err).__name__
        raise ImageError(f"the image data is truncated or corrupt ({reason}); send the complete file") from None
    except (MemoryError, OverflowError, IndexError, TypeError, ZeroDivisionError, struct.error) as err:
        # crafted headers have made PIL's plugins raise these; never let them become a 500
        raise ImageError(f"cannot decode this {ACCEPTED} file ({type(err).__name__}: {err})") from None
    return to_channels(rgb[None], channels)[0]
