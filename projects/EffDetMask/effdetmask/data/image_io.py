"""Reading images for the mapper and cache builder: always RGB uint8, or a clear error.

Decisions:

* OpenCV (``cv2.IMREAD_COLOR``) decodes to 3 channels whatever is stored: grayscale is replicated,
  alpha is dropped, CMYK/YCCK JPEGs are converted by libjpeg, 16-bit PNGs are scaled to 8 bit.
* EXIF orientation is IGNORED (``cv2.IMREAD_IGNORE_ORIENTATION``). COCO, Fashionpedia and the
  Kaggle CSV give ``height``/``width`` and polygon/RLE coordinates in the *stored* pixel grid (the
  annotation tools and pycocotools never apply EXIF). Rotating the pixels would move the image
  away from its masks, and OpenCV's default would do exactly that for an EXIF-rotated photo.
* The decoded size must equal the annotation's ``(height, width)``: a mismatch means the wrong
  file or a rotated copy, and training on it would silently misplace every mask.
* A truncated JPEG is an error, not a grey-padded image: libjpeg only warns ("premature end of
  JPEG file") and returns an image, so the end-of-image marker is checked explicitly.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import cv2
import numpy as np

from .validation import DatasetIssue, Reason

__all__ = ["read_image_rgb", "check_image_file"]

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
# Entropy-coded JPEG data never contains 0xFFD9 (0xFF bytes are stuffed as 0xFF00), so an EOI in
# the last few KB is the real end marker; the window tolerates bytes some cameras append after it.
_EOI_WINDOW = 4096


def check_image_file(path: str) -> bytes:
    """Read an image file's bytes; raise :class:`DatasetIssue` if missing, empty or truncated JPEG.

    Returns:
        the raw file bytes.
    """
    if not os.path.isfile(path):
        raise DatasetIssue(path, "image file does not exist", reason=Reason.MISSING_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DatasetIssue(path, f"cannot read image file: {e}", reason=Reason.MISSING_FILE) from e
    if not data:
        raise DatasetIssue(path, "image file is empty (0 bytes)", reason=Reason.CORRUPT_IMAGE)
    if data[:2] == _JPEG_SOI and _JPEG_EOI not in data[-_EOI_WINDOW:]:
        raise DatasetIssue(
            path,
            "JPEG is truncated: no end-of-image marker (0xFFD9) at the end of the file",
            reason=Reason.CORRUPT_IMAGE,
        )
    return data


def read_image_rgb(path: str, expected_hw: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Decode an image file to RGB.

    Args:
        path: image file (JPEG, PNG, ... anything OpenCV reads).
        expected_hw: ``(height, width)`` the annotations refer to; checked when given.
    Returns:
        ``np.uint8 [H, W, 3]`` RGB, C-contiguous, in the stored pixel orientation (EXIF ignored).
    Raises:
        DatasetIssue: missing/unreadable file, truncated or undecodable data, or a size that
            differs from ``expected_hw``; the message names the file.
    """
    data = check_image_file(path)
    buf = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise DatasetIssue(
            path,
            "cannot decode the image (corrupt or unsupported format)",
            reason=Reason.CORRUPT_IMAGE,
        )
    if image.dtype != np.uint8:
        # IMREAD_COLOR already gives 8 bit for every format OpenCV reads; kept as a guard.
        image = (image / (np.iinfo(image.dtype).max / 255.0)).round().astype(np.uint8)
    height, width = image.shape[:2]
    if expected_hw is not None and (height, width) != (int(expected_hw[0]), int(expected_hw[1])):
        raise DatasetIssue(
            path,
            f"decoded size (height, width) = {(height, width)} differs from the annotation's "
            f"{(int(expected_hw[0]), int(expected_hw[1]))} (wrong file, or a rotated copy?)",
            reason=Reason.IMAGE_SIZE_MISMATCH,
        )
    return np.ascontiguousarray(image[:, :, ::-1])
