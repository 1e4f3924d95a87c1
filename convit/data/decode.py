"""JPEG decoding with simplejpeg (libjpeg-turbo). The transforms decode at full resolution: the same pixels as
MindSpore's Decode, byte for byte, and as its RandomCropDecodeResize's crop decode except at the crop's edge
columns (see docs/fidelity.md). `min_size` can ask for a reduced DCT scale, which the training and evaluation
transforms do not use.

Headers are read before decoding, so a corrupt file or a decompression bomb (more than MAX_PIXELS) is
refused cheaply. Non-JPEG images (PNG) fall back to OpenCV.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import simplejpeg
from numpy.typing import NDArray

MAX_PIXELS = 50_000_000  # refuse larger images: 50 MP decodes to 150 MB


class UndecodableImage(Exception):
    """The bytes are not an image this pipeline will decode (reason in the message)."""


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) from the header, without decoding pixels."""
    if not data:
        raise UndecodableImage("empty file")
    if simplejpeg.is_jpeg(data):
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError as exc:
            raise UndecodableImage(f"bad JPEG header ({exc})") from None
        return int(height), int(width)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
    raise UndecodableImage("not a JPEG or PNG image")


def decode(data: bytes, min_size: tuple[int, int] = (0, 0)) -> NDArray[Any]:
    """RGB uint8 (H, W, 3). For JPEGs, the smallest DCT scale whose output is at least `min_size` (h, w)."""
    height, width = image_size(data)
    if height * width > MAX_PIXELS:
        raise UndecodableImage(f"{width}x{height} exceeds the {MAX_PIXELS // 1_000_000} MP limit")
    if height == 0 or width == 0:
        raise UndecodableImage("zero-sized image")
    try:
        if simplejpeg.is_jpeg(data):
            pixels: NDArray[Any] = simplejpeg.decode_jpeg(
                data, colorspace="RGB", min_height=min(min_size[0], height), min_width=min(min_size[1], width)
            )
            return pixels
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except ValueError as exc:
        raise UndecodableImage(f"corrupt image data ({exc})") from None
    if image is None:
        raise UndecodableImage("corrupt image data")
    rgb: NDArray[Any] = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return rgb
