"""The one module that converts between mask formats.

Formats:

* binary mask: ``np.uint8 [H, W]`` of 0/1.
* polygons: ``[[x0, y0, x1, y1, ...], ...]`` absolute pixels, each with >= 3 points (COCO).
* COCO RLE: ``{"size": [H, W], "counts": str | bytes}`` (compressed) or ``counts: List[int]``
  (uncompressed, used by ``iscrowd`` annotations); runs are column-major and start with zeros.
  Functions here always *return* compressed RLE with ``str`` counts (JSON-serialisable).
* Kaggle iMaterialist RLE: ``"start length start length ..."``; starts are 1-indexed into the
  column-major (top-to-bottom, then left-to-right) flattened image.

Every check raises :class:`MaskFormatError` with the problem in words; callers that know the file
and record (the dataset loaders) wrap it into a ``DatasetIssue`` naming them.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Union

import cv2
import numpy as np
import pycocotools.mask as mask_util

__all__ = [
    "MaskFormatError",
    "polygons_to_mask",
    "polygons_to_rle",
    "coco_rle_decode",
    "coco_rle_encode",
    "coco_rle_encode_batch",
    "coco_rle_encode_crop",
    "validate_coco_rle",
    "kaggle_rle_decode",
    "kaggle_rle_encode",
    "kaggle_rle_to_coco_rle",
    "validate_segmentation",
    "segmentation_to_rle",
    "segmentation_to_mask",
    "rasterize_segmentation",
    "rle_to_box_xywh",
    "mask_to_box_xyxy",
    "masks_to_boxes_xyxy",
]

Polygons = List[List[float]]
RLE = Dict[str, Any]


class MaskFormatError(ValueError):
    """A segmentation that cannot be a valid mask (bad polygon, bad RLE, size mismatch)."""


def _check_polygons(polygons: Any) -> Polygons:
    if not isinstance(polygons, (list, tuple)) or len(polygons) == 0:
        raise MaskFormatError(f"polygons must be a non-empty list of lists, got {polygons!r:.80}")
    out = []
    for k, poly in enumerate(polygons):
        if not isinstance(poly, (list, tuple)):
            raise MaskFormatError(f"polygon {k} is not a list of coordinates: {poly!r:.80}")
        coords = np.asarray(poly, dtype=np.float64)
        if coords.ndim != 1 or coords.size % 2:
            raise MaskFormatError(f"polygon {k} has an odd number of coordinates ({coords.size})")
        if coords.size < 6:
            raise MaskFormatError(
                f"polygon {k} has {coords.size // 2} point(s); a polygon needs at least 3"
            )
        if not np.isfinite(coords).all():
            raise MaskFormatError(f"polygon {k} has a non-finite coordinate")
        out.append(coords.tolist())
    return out


def _to_str_counts(rle: RLE) -> RLE:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def polygons_to_rle(polygons: Polygons, height: int, width: int) -> RLE:
    """Polygons (one object, parts merged) -> compressed COCO RLE of size ``[height, width]``."""
    polys = _check_polygons(polygons)
    rles = mask_util.frPyObjects(polys, int(height), int(width))
    return _to_str_counts(mask_util.merge(rles))


def polygons_to_mask(polygons: Polygons, height: int, width: int) -> np.ndarray:
    """Polygons -> ``np.uint8 [height, width]`` binary mask (COCO rasterisation)."""
    return coco_rle_decode(polygons_to_rle(polygons, height, width))


def _parse_compressed_counts(counts: str) -> List[int]:
    """Python port of pycocotools' ``rleFrString`` that rejects bad characters.

    pycocotools' C decoder neither checks the characters nor bounds its writes, so a malformed
    string could crash the process; parsing here first turns that into an error.
    """
    out: List[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise MaskFormatError("compressed RLE counts end in the middle of a number")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise MaskFormatError(f"compressed RLE counts contain bad character {counts[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def validate_coco_rle(rle: Any, height: int | None = None, width: int | None = None) -> None:
    """Raise :class:`MaskFormatError` unless ``rle`` is a well-formed COCO RLE.

    Checks: a dict with ``size`` ``[H, W]`` (equal to ``[height, width]`` when given) and ``counts``
    (str/bytes or list of ints), no negative run, runs summing to exactly ``H * W``.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise MaskFormatError(f"RLE must be a dict with 'size' and 'counts', got {rle!r:.80}")
    size = rle["size"]
    if not isinstance(size, (list, tuple)) or len(size) != 2 or min(size) < 0:
        raise MaskFormatError(f"RLE size must be [height, width], got {size!r}")
    h, w = int(size[0]), int(size[1])
    if height is not None and width is not None and (h, w) != (int(height), int(width)):
        raise MaskFormatError(f"RLE size {[h, w]} differs from the image size {[height, width]}")
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if isinstance(counts, str):
        runs = _parse_compressed_counts(counts)
    elif isinstance(counts, (list, tuple)):
        if not all(isinstance(c, (int, np.integer)) for c in counts):
            raise MaskFormatError("uncompressed RLE counts must be integers")
        runs = [int(c) for c in counts]
    else:
        raise MaskFormatError(f"RLE counts must be a string or a list, got {type(counts).__name__}")
    if any(r < 0 for r in runs):
        raise MaskFormatError("RLE has a negative run length")
    if sum(runs) != h * w:
        raise MaskFormatError(f"RLE runs cover {sum(runs)} pixels, the size {[h, w]} has {h * w}")


def _compress(rle: RLE) -> RLE:
    if isinstance(rle["counts"], list):
        h, w = rle["size"]
        return _to_str_counts(mask_util.frPyObjects(rle, int(h), int(w)))
    return _to_str_counts(rle)


def _decode(rle: RLE) -> np.ndarray:
    """COCO RLE (compressed or not) -> ``np.uint8 [H, W]`` without validating it."""
    c = _compress(rle)
    return mask_util.decode({"size": c["size"], "counts": c["counts"].encode("ascii")})


def coco_rle_decode(rle: RLE, height: int | None = None, width: int | None = None) -> np.ndarray:
    """COCO RLE (compressed or not) -> ``np.uint8 [H, W]``; validated first (see above)."""
    validate_coco_rle(rle, height, width)
    return _decode(rle)


def coco_rle_encode(mask: np.ndarray) -> RLE:
    """``[H, W]`` binary mask (any dtype, nonzero = on) -> compressed COCO RLE, ``str`` counts."""
    if mask.ndim != 2:
        raise MaskFormatError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    return _to_str_counts(mask_util.encode(np.asfortranarray(mask != 0, dtype=np.uint8)))


def coco_rle_encode_batch(masks: np.ndarray) -> List[RLE]:
    """``[N, H, W]`` binary masks -> N compressed COCO RLEs in one ``pycocotools`` call."""
    if masks.ndim != 3:
        raise MaskFormatError(f"masks must be [N, H, W], got shape {masks.shape}")
    # pycocotools wants [H, W, N] in Fortran order, which is exactly [N, W, H] in C order
    fortran = np.ascontiguousarray((masks != 0).transpose(0, 2, 1), dtype=np.uint8).T
    return [_to_str_counts(r) for r in mask_util.encode(fortran)] if len(masks) else []


def coco_rle_encode_crop(crop: np.ndarray, top: int, left: int, height: int, width: int) -> RLE:
    """COCO RLE of a ``[height, width]`` mask that is off outside one window, from the window only.

    ``crop`` (``[h, w]``, nonzero = on) is the mask at ``[top:top + h, left:left + w]``. The result
    equals :func:`coco_rle_encode` of the full mask, but memory and time grow with the window's
    area, not the image's: the runs are found in the window and placed at their full-image
    (column-major) offsets.
    """
    if crop.ndim != 2:
        raise MaskFormatError(f"crop must be 2-D [h, w], got shape {crop.shape}")
    h, w = crop.shape
    if top < 0 or left < 0 or top + h > height or left + w > width:
        raise MaskFormatError(f"crop {[h, w]} at {[top, left]} is outside the {[height, width]} "
                              "mask")
    total = height * width
    if crop.size == 0 or total == 0:
        return _compress({"size": [height, width], "counts": [total]})
    # the window's columns, padded with one off row above / below when the image has pixels
    # there: the padding row stands for all those off pixels of the column
    pad_top, pad_bottom = int(top > 0), int(top + h < height)
    cols = np.zeros((w, pad_top + h + pad_bottom), dtype=bool)
    cols[:, pad_top:pad_top + h] = crop.T != 0
    # with one off pixel before and after: the rest of the image (all off)
    flat = np.concatenate([[False], cols.reshape(-1), [False]])
    change = np.flatnonzero(flat[1:] != flat[:-1])  # flat[change + 1] starts a run
    # full-image column-major index of each run start
    col, row = np.divmod(change, cols.shape[1])
    row = np.where(row < pad_top, 0, np.where(row >= pad_top + h, top + h, row - pad_top + top))
    starts = (col + left) * height + row
    # a change at the trailing pixel: the window ends the image with an "on" run
    starts = np.where(change == cols.size, (left + w) * height, starts)
    counts = np.diff(np.concatenate([[0], starts, [total]]))
    if len(counts) > 1 and counts[-1] == 0:
        counts = counts[:-1]
    return _compress({"size": [height, width], "counts": counts.tolist()})


def _kaggle_runs(encoded: str, height: int, width: int) -> np.ndarray:
    """Parse and validate Kaggle RLE -> ``int64 [R, 2]`` of (0-indexed start, length)."""
    try:
        values = np.array(encoded.split(), dtype=np.int64)
    except (ValueError, AttributeError) as e:
        raise MaskFormatError(f"Kaggle RLE must be integers separated by spaces: {e}") from None
    if values.size == 0 or values.size % 2:
        raise MaskFormatError(f"Kaggle RLE needs 'start length' pairs, got {values.size} numbers")
    runs = values.reshape(-1, 2).copy()
    runs[:, 0] -= 1  # starts are 1-indexed
    total = int(height) * int(width)
    if (runs[:, 0] < 0).any():
        raise MaskFormatError("Kaggle RLE has a start < 1 (starts are 1-indexed)")
    if (runs[:, 1] <= 0).any():
        raise MaskFormatError("Kaggle RLE has a run of length <= 0")
    ends = runs[:, 0] + runs[:, 1]
    if ends.max() > total:
        raise MaskFormatError(
            f"Kaggle RLE run ends at pixel {int(ends.max())}, beyond {height}x{width} = {total}"
        )
    if (runs[1:, 0] < ends[:-1]).any():
        raise MaskFormatError("Kaggle RLE runs are unsorted or overlap")
    return runs


def kaggle_rle_decode(encoded: str, height: int, width: int) -> np.ndarray:
    """Kaggle ``"start length ..."`` -> ``np.uint8 [height, width]`` (column-major, 1-indexed)."""
    runs = _kaggle_runs(encoded, height, width)
    flat = np.zeros(int(height) * int(width), dtype=np.uint8)
    for start, length in runs:
        flat[start : start + length] = 1
    return flat.reshape(int(width), int(height)).T.copy()


def kaggle_rle_encode(mask: np.ndarray) -> str:
    """``[H, W]`` binary mask -> Kaggle ``"start length ..."`` (column-major, 1-indexed)."""
    if mask.ndim != 2:
        raise MaskFormatError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    flat = np.concatenate([[0], (mask.T.ravel() != 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, stops = edges[0::2], edges[1::2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts, stops))


def kaggle_rle_to_coco_rle(encoded: str, height: int, width: int) -> RLE:
    """Kaggle RLE -> compressed COCO RLE without decoding the mask.

    Both formats run column-major, so Kaggle's (start, length) pairs become COCO's alternating
    (zeros, ones) counts directly; this keeps loading a 5000 x 3700 image's masks cheap.
    """
    runs = _kaggle_runs(encoded, height, width)
    ends = runs[:, 0] + runs[:, 1]
    gaps = runs[:, 0] - np.concatenate([[0], ends[:-1]])
    counts = np.stack([gaps, runs[:, 1]], axis=1).ravel().tolist()
    counts.append(int(height) * int(width) - int(ends[-1]))
    return _compress({"size": [int(height), int(width)], "counts": counts})


def validate_segmentation(segm: Any, height: int, width: int) -> None:
    """Raise :class:`MaskFormatError` unless ``segm`` is valid polygons or a valid COCO RLE.

    Cheap (no rasterisation), so loaders can check every annotation of a large JSON.
    """
    if isinstance(segm, dict):
        validate_coco_rle(segm, height, width)
    else:
        _check_polygons(segm)


def segmentation_to_rle(segm: Union[Polygons, RLE], height: int, width: int) -> RLE:
    """Polygons or COCO RLE -> validated compressed COCO RLE of size ``[height, width]``."""
    if isinstance(segm, dict):
        validate_coco_rle(segm, height, width)
        return _compress(segm)
    return polygons_to_rle(segm, height, width)


def segmentation_to_mask(segm: Union[Polygons, RLE], height: int, width: int) -> np.ndarray:
    """Polygons or COCO RLE -> ``np.uint8 [height, width]`` binary mask."""
    return coco_rle_decode(segmentation_to_rle(segm, height, width))


def rasterize_segmentation(segm: Union[Polygons, RLE], height: int, width: int, out_h: int,
                           out_w: int) -> np.ndarray:
    """Polygons or COCO RLE of a ``height x width`` image -> ``np.uint8 [out_h, out_w]`` 0/1 mask
    at another resolution (the mapper's and the HDF5 cache's letterbox, a drawing's size).

    Polygons are rasterised directly at the output scale (cheap and exact at any size) and checked
    as :func:`validate_segmentation` does; RLE is decoded at its own size without validating it
    again (the loaders did) and resized by centre-aligned nearest neighbour.
    """
    if isinstance(segm, dict):
        mask = _decode(segm)
        if mask.shape != (out_h, out_w):
            # centre-aligned nearest: INTER_NEAREST samples pixel corners, shifting the mask by
            # about half an input pixel against the (centre-aligned) INTER_AREA image
            mask = cv2.resize(mask, (out_w, out_h), interpolation=cv2.INTER_NEAREST_EXACT)
        return mask
    sx, sy = out_w / width, out_h / height
    scaled = [(np.asarray(p).reshape(-1, 2) * (sx, sy)).reshape(-1).tolist()
              for p in _check_polygons(segm)]
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects(scaled, out_h, out_w)))


def rle_to_box_xywh(rle: RLE) -> List[float]:
    """Tight ``[x, y, w, h]`` (pixel edges) of a COCO RLE without decoding; zeros if empty."""
    c = _compress(rle)
    box = mask_util.toBbox({"size": c["size"], "counts": c["counts"].encode("ascii")})
    return [float(v) for v in box]


def mask_to_box_xyxy(mask: np.ndarray) -> np.ndarray:
    """``[H, W]`` binary mask -> ``float32 [4]`` tight xyxy on pixel edges.

    ``x1 = last column + 1`` so that ``x1 - x0`` is the width in pixels, matching COCO's bbox.
    An empty mask gives ``[0, 0, 0, 0]``.
    """
    return masks_to_boxes_xyxy(mask[None])[0]


def masks_to_boxes_xyxy(masks: Union[np.ndarray, Sequence[np.ndarray]]) -> np.ndarray:
    """``[N, H, W]`` binary masks -> ``float32 [N, 4]`` tight xyxy; empty masks give zeros."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise MaskFormatError(f"masks must be [N, H, W], got shape {masks.shape}")
    n, h, w = masks.shape
    boxes = np.zeros((n, 4), dtype=np.float32)
    if n == 0:
        return boxes
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # [N, H], [N, W]
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 2] = w - cols[:, ::-1].argmax(axis=1)
    boxes[:, 3] = h - rows[:, ::-1].argmax(axis=1)
    boxes[~rows.any(axis=1)] = 0
    return boxes
