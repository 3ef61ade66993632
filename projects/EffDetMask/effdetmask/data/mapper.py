"""Dataset dict or HDF5 cache record -> one model input sample (see ``docs/interfaces.md``).

The geometry is shared with the cache builder (``letterbox_size``, ``resize_image``,
``annotation_to_mask``, ``masks_to_boxes``), so a mask cached at size ``S`` is bit-identical to the
mask the mapper produces from the JSON at input size ``S``.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch

from effdetmask.data.image_io import read_image_rgb
from effdetmask.data.taxonomy import (
    NUM_ATTRIBUTES,
    attribute_id_to_index,
    left_right_attribute_pairs,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetMapper",
    "trivial_batch_collator",
    "letterbox_size",
    "resize_image",
    "annotation_to_mask",
    "masks_to_boxes",
]


def letterbox_size(height: int, width: int, size: int) -> Tuple[int, int, float]:
    """Resized ``(h, w, scale)`` with the long side equal to ``size`` (aspect kept).

    ``scale`` is input pixels per original pixel, ``size / max(height, width)``.
    """
    scale = size / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale))), scale


def resize_image(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """uint8 ``[H, W, C]`` -> ``[out_h, out_w, C]``: area averaging when shrinking (no aliasing),
    bilinear when enlarging."""
    h, w = image.shape[:2]
    if (h, w) == (out_h, out_w):
        return image
    interp = cv2.INTER_AREA if out_h * out_w < h * w else cv2.INTER_LINEAR
    return cv2.resize(image, (out_w, out_h), interpolation=interp)


def annotation_to_mask(segmentation: Any, height: int, width: int, out_h: int,
                       out_w: int) -> np.ndarray:
    """Polygons or COCO RLE (in an ``height x width`` image) -> uint8 ``[out_h, out_w]`` 0/1 mask.

    Polygons are rasterized directly at the output scale (cheap and exact at any size); RLE is
    decoded at its own size and resized by centre-aligned nearest neighbour.
    """
    if isinstance(segmentation, list):
        polys = [np.asarray(p, np.float64) for p in segmentation]
        if not polys or any(len(p) < 6 or len(p) % 2 for p in polys):
            raise ValueError("polygon with fewer than 3 points or an odd number of coordinates")
        sx, sy = out_w / width, out_h / height
        scaled = [(p.reshape(-1, 2) * (sx, sy)).reshape(-1).tolist() for p in polys]
        rle = mask_util.merge(mask_util.frPyObjects(scaled, out_h, out_w))
        return mask_util.decode(rle)
    if isinstance(segmentation, dict):
        rle = dict(segmentation)
        if isinstance(rle.get("counts"), list):  # uncompressed RLE
            rle = mask_util.frPyObjects(rle, *rle["size"])
        elif isinstance(rle.get("counts"), str):
            rle["counts"] = rle["counts"].encode("ascii")
        mask = mask_util.decode(rle)
        if mask.shape != (out_h, out_w):
            # centre-aligned nearest: INTER_NEAREST samples pixel corners, shifting the mask by
            # about half an input pixel against the (centre-aligned) INTER_AREA image
            mask = cv2.resize(mask, (out_w, out_h), interpolation=cv2.INTER_NEAREST_EXACT)
        return mask
    raise ValueError(f"unsupported segmentation type {type(segmentation).__name__}")


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """uint8/bool ``[N, H, W]`` -> float32 ``[N, 4]`` xyxy pixel-edge boxes (``x1 = last col + 1``).

    Empty masks give ``[0, 0, 0, 0]``.
    """
    n = masks.shape[0]
    boxes = np.zeros((n, 4), np.float32)
    if n == 0:
        return boxes
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    nonempty = rows.any(axis=1)
    h, w = masks.shape[1:]
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 2] = w - cols[:, ::-1].argmax(axis=1)
    boxes[:, 3] = h - rows[:, ::-1].argmax(axis=1)
    boxes[~nonempty] = 0
    return boxes


def trivial_batch_collator(batch: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The model takes a list of samples; keep the list as it is."""
    return batch


class DatasetMapper:
    """Callable mapping one dataset dict or cache record to the mapper output of the interfaces doc.

    Args:
        image_size: ``S``, the square model input (``INPUT.SIZE``).
        is_train: apply the training augmentations.
        hflip_prob: horizontal flip probability (training only).
        grayscale_prob: grayscale probability (training only).
        attribute_id_to_index: sparse Fashionpedia attribute id -> dense index
            ``0..num_attributes-1``.
        num_attributes: width of the multi-hot ``attributes`` matrix.
        flip_attribute_pairs: ``(index_a, index_b)`` pairs that swap under a horizontal flip.
    Randomness comes from ``torch``'s generator, which DataLoader seeds per worker.
    """

    def __init__(self, *, image_size: int, is_train: bool, hflip_prob: float = 0.5,
                 grayscale_prob: float = 0.1, attribute_id_to_index: Mapping[int, int],
                 num_attributes: int = NUM_ATTRIBUTES,
                 flip_attribute_pairs: Sequence[Tuple[int, int]] = ()) -> None:
        self.image_size = int(image_size)
        self.is_train = is_train
        self.hflip_prob = float(hflip_prob) if is_train else 0.0
        self.grayscale_prob = float(grayscale_prob) if is_train else 0.0
        self.attribute_id_to_index = dict(attribute_id_to_index)
        self.num_attributes = int(num_attributes)
        perm = np.arange(self.num_attributes)
        for a, b in flip_attribute_pairs:
            perm[a], perm[b] = b, a
        self._flip_perm = perm

    @classmethod
    def from_config(cls, cfg: Any, is_train: bool) -> "DatasetMapper":
        return cls(image_size=cfg.INPUT.SIZE, is_train=is_train, hflip_prob=cfg.INPUT.HFLIP_PROB,
                   grayscale_prob=cfg.INPUT.GRAYSCALE_PROB,
                   attribute_id_to_index=attribute_id_to_index(),
                   flip_attribute_pairs=sorted(left_right_attribute_pairs()))

    def __call__(self, item: Mapping[str, Any]) -> Dict[str, Any]:
        """Map a dataset dict (``file_name``, ``annotations`` ...) or a cache record (``image``,
        ``masks_rle`` ...; see ``hdf5_cache.CachedDataset``) to a sample dict."""
        height, width = int(item["height"]), int(item["width"])
        th, tw, scale = letterbox_size(height, width, self.image_size)
        # a cache record carries its decoded image (and RLE masks) at cache resolution
        src = item["image"] if "image" in item else read_image_rgb(item["file_name"])
        src_h, src_w = src.shape[:2]
        if "image" not in item and (src_h, src_w) != (height, width):
            raise ValueError(f"image is {src_w}x{src_h} but the dataset says {width}x{height}")
        image = resize_image(src, th, tw)
        anns = item.get("annotations")
        flip = bool(torch.rand(()) < self.hflip_prob)
        gray = bool(torch.rand(()) < self.grayscale_prob)
        if flip:
            image = image[:, ::-1]
        if gray:
            gray_img = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
            image = np.repeat(gray_img[..., None], 3, axis=2)
        S = self.image_size
        canvas = np.zeros((S, S, 3), np.uint8)  # top-left placement, zero padding bottom/right
        canvas[:th, :tw] = image
        out: Dict[str, Any] = {
            "image": torch.from_numpy(canvas).permute(2, 0, 1).contiguous(),
            "image_id": int(item["image_id"]), "file_name": str(item["file_name"]),
            "height": height, "width": width, "scale": float(scale),
        }
        if anns is not None:
            out["instances"] = self._instances(anns, src_h, src_w, th, tw, flip)
        return out

    def _instances(self, anns: Sequence[Mapping[str, Any]], src_h: int, src_w: int, th: int,
                   tw: int, flip: bool) -> Dict[str, torch.Tensor]:
        S = self.image_size
        anns = [a for a in anns if not a.get("iscrowd", 0)]
        masks = np.zeros((len(anns), S, S), np.uint8)
        classes = np.zeros(len(anns), np.int64)
        attrs = np.zeros((len(anns), self.num_attributes), np.float32)
        for i, ann in enumerate(anns):
            m = annotation_to_mask(ann["segmentation"], src_h, src_w, th, tw)
            masks[i, :th, :tw] = m[:, ::-1] if flip else m
            classes[i] = int(ann["category_id"])
            for aid in ann.get("attribute_ids", ()):
                idx = self.attribute_id_to_index.get(int(aid))
                if idx is None:
                    raise ValueError(f"unknown attribute id {aid} (category {classes[i]})")
                attrs[i, idx] = 1.0
        if flip:
            attrs = attrs[:, self._flip_perm]
        boxes = masks_to_boxes(masks)
        # one keep-index for all four fields, so they can never drift out of step
        keep = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
        return {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes[keep])),
            "classes": torch.from_numpy(classes[keep]),
            "masks": torch.from_numpy(np.ascontiguousarray(masks[keep])),
            "attributes": torch.from_numpy(np.ascontiguousarray(attrs[keep])),
        }
