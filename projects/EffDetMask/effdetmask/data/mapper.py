"""Dataset dict or HDF5 cache record -> one model input sample (see ``docs/interfaces.md``).

The geometry is shared with the cache builder (``letterbox_size``, ``resize_image`` here; the mask
conversions of :mod:`effdetmask.structures.masks`), so a mask cached at size ``S`` is
bit-identical to the mask the mapper produces from the JSON at input size ``S``.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from effdetmask.data.image_io import read_image_rgb
from effdetmask.data.taxonomy import (
    NUM_ATTRIBUTES,
    attribute_id_to_index,
    left_right_attribute_pairs,
)
from effdetmask.structures.masks import masks_to_boxes_xyxy, rasterize_segmentation

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetMapper",
    "trivial_batch_collator",
    "attribute_ids_known",
    "letterbox_size",
    "resize_image",
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


def attribute_ids_known(ann: Mapping[str, Any]) -> bool:
    """Whether an annotation's ``attribute_ids`` are its attributes (an empty list = none) rather
    than unknown (a blank Kaggle ``AttributesIds`` cell, a plain COCO file).

    The loaders record it as ``attribute_ids_known``; an annotation without that field is known
    when it has an ``attribute_ids`` field at all.
    """
    if "attribute_ids_known" in ann:
        return bool(ann["attribute_ids_known"])
    return "attribute_ids" in ann


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
    Randomness comes from the ``generator`` passed with each item (the training loader gives every
    sample its own, seeded from ``(SEED, epoch, index)``), else from torch's global generator.
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

    def __call__(self, item: Mapping[str, Any],
                 generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
        """Map a dataset dict (``file_name``, ``annotations`` ...) or a cache record (``image``,
        ``masks_rle`` ...; see ``hdf5_cache.CachedDataset``) to a sample dict; the flip and
        grayscale draws come from ``generator``."""
        height, width = int(item["height"]), int(item["width"])
        th, tw, scale = letterbox_size(height, width, self.image_size)
        # a cache record carries its decoded image (and RLE masks) at cache resolution
        src = item["image"] if "image" in item else read_image_rgb(item["file_name"])
        src_h, src_w = src.shape[:2]
        if "image" not in item and (src_h, src_w) != (height, width):
            raise ValueError(f"image is {src_w}x{src_h} but the dataset says {width}x{height}")
        image = resize_image(src, th, tw)
        anns = item.get("annotations")
        flip = bool(torch.rand((), generator=generator) < self.hflip_prob)
        gray = bool(torch.rand((), generator=generator) < self.grayscale_prob)
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
        known = np.zeros(len(anns), bool)
        for i, ann in enumerate(anns):
            m = rasterize_segmentation(ann["segmentation"], src_h, src_w, th, tw)
            masks[i, :th, :tw] = m[:, ::-1] if flip else m
            classes[i] = int(ann["category_id"])
            known[i] = attribute_ids_known(ann)
            for aid in ann.get("attribute_ids", ()):
                idx = self.attribute_id_to_index.get(int(aid))
                if idx is None:
                    raise ValueError(f"unknown attribute id {aid} (category {classes[i]})")
                attrs[i, idx] = 1.0
        if flip:
            attrs = attrs[:, self._flip_perm]
        boxes = masks_to_boxes_xyxy(masks)
        # one keep-index for all five fields, so they can never drift out of step
        keep = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
        return {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes[keep])),
            "classes": torch.from_numpy(classes[keep]),
            "masks": torch.from_numpy(np.ascontiguousarray(masks[keep])),
            "attributes": torch.from_numpy(np.ascontiguousarray(attrs[keep])),
            "attributes_known": torch.from_numpy(known[keep]),
        }
