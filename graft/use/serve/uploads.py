"""Reading a request's photos: the body counted against `max_upload` as it streams in, then
each upload judged by its content (415 not an image graft reads, 422 unsafe to decode) before
the model sees it."""

from __future__ import annotations

import asyncio
import io
import warnings
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.requests import Request

from graft.data.images import SUPPORTED_EXTENSIONS
from graft.errors import ImageError
from graft.use.serve.config import MAX_FILES

if TYPE_CHECKING:
    from graft.use.predictor import Predictor

_FORMATS = sorted(set(SUPPORTED_EXTENSIONS.values()))


class UploadTooLarge(Exception):
    pass


class UploadTooSlow(Exception):
    """The body did not arrive within the server's body timeout (408)."""


class BadImage(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _limited(receive, limit: int, timeout_s: float):
    """The ASGI `receive` with a byte budget and a deadline: the body is counted as it streams
    in, and a body still arriving `timeout_s` after the first read raises UploadTooSlow (a client
    sending a byte a second would otherwise hold its request, and its buffers, for days)."""
    seen = 0
    deadline = None

    async def wrapped():
        nonlocal seen, deadline
        loop = asyncio.get_running_loop()
        deadline = deadline or loop.time() + timeout_s
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise UploadTooSlow() from None
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise UploadTooLarge()
        return message

    return wrapped


async def read_uploads(request: Request, limit: int, timeout_s: float = 60.0) -> list[tuple[str, bytes]]:
    """[(name, bytes)] of the request's images: the files of a multipart form, else the body
    whatever its declared type (`curl --data-binary @x.jpg` says form-urlencoded); the content
    is judged later. Raises UploadTooLarge, UploadTooSlow."""
    ctype = request.headers.get("content-type", "")
    limited = Request(request.scope, _limited(request.receive, limit, timeout_s))
    if ctype.startswith("multipart/form-data"):
        out = []
        async with limited.form(max_files=MAX_FILES, max_fields=MAX_FILES) as form:
            for i, (_, value) in enumerate(form.multi_items()):
                if hasattr(value, "read"):
                    out.append((value.filename or f"file-{i}", await value.read()))
        return out
    chunks = []
    async for chunk in limited.stream():
        chunks.append(chunk)
    data = b"".join(chunks)
    return [(request.query_params.get("name", "upload"), data)] if data else []


def sniff(data: bytes) -> int:
    """The pixels (width x height) the header declares; BadImage(415) unless the bytes are in a
    format graft reads, BadImage(422) for more pixels than Pillow's decompression-bomb limit.
    Only the header is read: nothing is decoded."""
    if not data:
        raise BadImage(415, "empty upload (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_FORMATS) as img:
                width, height = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(422, f"refused: too many pixels, a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise BadImage(415, f"not an image graft reads ({', '.join(_FORMATS)})") from None
    except Exception as e:
        raise BadImage(422, f"cannot decode image ({e or type(e).__name__})") from None
    return width * height


def measure(uploads: list[tuple[str, bytes]]) -> list[int | BadImage]:
    """Each upload's pixels from its header (sniff), or the BadImage it earns: what the request
    will cost is known before any photo is decoded."""
    out = []
    for _, data in uploads:
        try:
            out.append(sniff(data))
        except BadImage as e:
            out.append(e)
    return out


def decode(predictor: Predictor, data: bytes) -> np.ndarray:
    """The model's input crop from an upload's bytes, or BadImage with the status it earns."""
    sniff(data)  # again: a header costs microseconds, a bomb let through a whole decoder
    try:
        return predictor.prepare(data)
    except ImageError as e:
        raise BadImage(422, e.reason) from None
