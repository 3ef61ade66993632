"""Reading images for the mapper and cache builder: always RGB uint8, or a clear error.

Decisions:

* OpenCV (``cv2.IMREAD_COLOR``) decodes to 3 channels whatever is stored: grayscale is replicated,
  alpha is dropped, CMYK/YCCK JPEGs are converted by libjpeg, 16-bit PNGs are scaled to 8 bit.
* EXIF orientation is IGNORED by default (``cv2.IMREAD_IGNORE_ORIENTATION``). COCO, Fashionpedia
  and the Kaggle CSV give ``height``/``width`` and polygon/RLE coordinates in the *stored* pixel
  grid (the annotation tools and pycocotools never apply EXIF). Rotating the pixels would move the
  image away from its masks, and OpenCV's default would do exactly that for an EXIF-rotated photo.
  Photos without annotations (the predictor, ``demo.py``) pass ``apply_exif_orientation=True``:
  they are then decoded as a viewer displays them (a phone photo upright, not sideways).
* The decoded size must equal the annotation's ``(height, width)``: a mismatch means the wrong
  file or a rotated copy, and training on it would silently misplace every mask.
* A truncated JPEG is an error, not a grey-padded image: libjpeg only warns ("premature end of
  JPEG file") and returns an image, so the end-of-image marker is checked explicitly: the marker
  segments are walked (skipping their payloads, so an EXIF thumbnail's own end marker does not
  count) and the entropy-coded scan data is searched for the end-of-image marker. Bytes after it
  (phones append depth maps, motion-photo videos, vendor trailers of any size) are ignored.
"""

from __future__ import annotations

import io
import os
import re
from typing import Optional, Tuple

import cv2
import numpy as np

from .validation import DatasetIssue, Reason

__all__ = ["read_image_rgb", "check_image_file", "exif_orientation", "apply_orientation"]

_JPEG_SOI = b"\xff\xd8"
_EOI, _SOS = 0xD9, 0xDA
# Markers without a length field: TEM, RST0..RST7, SOI, EOI.
_STANDALONE = {0x01, *range(0xD0, 0xD8), 0xD8, _EOI}
# In entropy-coded data a 0xFF byte is stuffed as 0xFF00 and RSTn (0xFFD0..0xFFD7) may occur;
# any other 0xFF xx (after optional 0xFF fill bytes) is the marker ending the scan.
_SCAN_END = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")
# What may follow a scan (besides EOI): tables, restart interval, DNL, APPn, COM, the next scan.
_AFTER_SCAN = {0xC4, 0xCC, 0xDB, 0xDC, 0xDD, _SOS, *range(0xE0, 0xF0), 0xFE}
_ORIENTATION_TAG = 274  # EXIF Orientation


def _jpeg_is_complete(data: bytes) -> bool:
    """Whether a JPEG's image data reaches its end-of-image marker (0xFFD9).

    Walks the marker segments from SOI, skipping their payloads; after each start-of-scan the
    entropy-coded data runs to the next marker. Returns False when the data ends before EOI (the
    file was cut short), or when a scan is followed by something no JPEG has there (the data was
    cut and other bytes follow). A malformed header before the first scan returns True: the
    decoder then decides (and rejects what it cannot read). Anything after EOI is ignored.
    """
    pos, end, in_scans = 2, len(data), False
    while True:
        if pos >= end:
            return False
        if data[pos] != 0xFF:
            return not in_scans  # not a marker where one must be
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= end:
            return False
        marker = data[pos]
        pos += 1
        if marker == _EOI:
            return True
        if in_scans and marker not in _AFTER_SCAN:
            return False
        if marker in _STANDALONE:
            continue
        if pos + 2 > end:
            return False
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2:
            return not in_scans
        pos += length
        if marker == _SOS:
            in_scans = True
            match = _SCAN_END.search(data, min(pos, end))
            if match is None:
                return False
            pos = match.end() - 2


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
    if data[:2] == _JPEG_SOI and not _jpeg_is_complete(data):
        raise DatasetIssue(
            path,
            "JPEG is truncated: its image data ends before the end-of-image marker (0xFFD9)",
            reason=Reason.CORRUPT_IMAGE,
        )
    return data


def exif_orientation(data: bytes) -> int:
    """The EXIF Orientation (1..8) of an encoded image; 1 (as stored) when absent or unreadable."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            value = int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001  (no readable EXIF: the pixels are shown as stored)
        return 1
    return value if 1 <= value <= 8 else 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Transform stored pixels ``[H, W, C]`` to the displayed orientation of an EXIF value 1..8.

    Same transforms as ``PIL.ImageOps.exif_transpose``: 2 mirror, 3 rotate 180, 4 flip, 5
    transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise.
    """
    if orientation == 2:
        image = image[:, ::-1]
    elif orientation == 3:
        image = image[::-1, ::-1]
    elif orientation == 4:
        image = image[::-1]
    elif orientation == 5:
        image = image.transpose(1, 0, 2)
    elif orientation == 6:
        image = np.rot90(image, k=-1)
    elif orientation == 7:
        image = image[::-1, ::-1].transpose(1, 0, 2)
    elif orientation == 8:
        image = np.rot90(image, k=1)
    return image


def read_image_rgb(path: str, expected_hw: Optional[Tuple[int, int]] = None, *,
                   apply_exif_orientation: bool = False) -> np.ndarray:
    """Decode an image file to RGB.

    Args:
        path: image file (JPEG, PNG, ... anything OpenCV reads).
        expected_hw: ``(height, width)`` the annotations refer to; checked when given (against
            the returned image, so in the displayed orientation with ``apply_exif_orientation``).
        apply_exif_orientation: rotate/mirror the pixels as the EXIF Orientation tag says (for
            photos without annotations: prediction, the demo). Default False: dataset images keep
            the stored pixel orientation their annotations refer to.
    Returns:
        ``np.uint8 [H, W, 3]`` RGB, C-contiguous, in the stored pixel orientation (EXIF ignored),
        or the displayed orientation with ``apply_exif_orientation=True``.
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
    if apply_exif_orientation:
        image = apply_orientation(image, exif_orientation(data))
    height, width = image.shape[:2]
    if expected_hw is not None and (height, width) != (int(expected_hw[0]), int(expected_hw[1])):
        raise DatasetIssue(
            path,
            f"decoded size (height, width) = {(height, width)} differs from the annotation's "
            f"{(int(expected_hw[0]), int(expected_hw[1]))} (wrong file, or a rotated copy?)",
            reason=Reason.IMAGE_SIZE_MISMATCH,
        )
    return np.ascontiguousarray(image[:, :, ::-1])
