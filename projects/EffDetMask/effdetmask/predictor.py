"""Batched inference on image files or arrays, like detectron2's ``DefaultPredictor``.

The images go through the evaluation :class:`~effdetmask.data.mapper.DatasetMapper`, so the model
sees exactly the letterbox it sees in evaluation (long side ``INPUT.SIZE``, top-left placement,
zero padding), and the model maps its outputs back to original pixels itself.

Channel order: files are decoded to RGB by :func:`~effdetmask.data.image_io.read_image_rgb`;
arrays are taken as **RGB** ``np.uint8 [H, W, 3]`` unless ``input_format="BGR"`` is passed (arrays
from ``cv2.imread``).

Orientation: files are decoded as a viewer displays them, i.e. with the EXIF Orientation tag
applied (a phone photo taken upright is predicted upright), so boxes, masks, ``height`` and
``width`` refer to the displayed image. Dataset loading does the opposite (annotations are in the
stored pixel grid); pass ``apply_exif_orientation=False`` to predict on the stored pixels, e.g.
to compare with such annotations. Arrays are taken as they are.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterator, List, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from .data.image_io import read_image_rgb
from .data.mapper import DatasetMapper

__all__ = ["BatchPredictor", "ImageInput", "load_images_rgb"]

logger = logging.getLogger(__name__)

# an image file path, or an ``np.uint8 [H, W, 3]`` array
ImageInput = Union[str, "os.PathLike[str]", np.ndarray]
_FORMATS = ("RGB", "BGR")


def _check_format(input_format: str) -> None:
    if input_format not in _FORMATS:
        raise ValueError(f"input_format must be one of {_FORMATS}, got {input_format!r}")


def _as_rgb(image: ImageInput, index: int, input_format: str,
            apply_exif_orientation: bool = True) -> Tuple[np.ndarray, str]:
    """One input -> (RGB ``np.uint8 [H, W, 3]``, name for messages and ``file_name``)."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        # DatasetIssue naming the file when missing/corrupt
        return read_image_rgb(path, apply_exif_orientation=apply_exif_orientation), path
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image {index}: expected a file path or a numpy array, "
                        f"got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
        raise ValueError(f"image {index}: expected a np.uint8 [H, W, 3] array, got "
                         f"{image.dtype} {list(image.shape)}")
    rgb = image[:, :, ::-1] if input_format == "BGR" else image
    return np.ascontiguousarray(rgb), f"<array {index}>"


def load_images_rgb(images: Sequence[ImageInput], input_format: str = "RGB", *,
                    apply_exif_orientation: bool = True) -> List[Tuple[np.ndarray, str]]:
    """Decode paths / convert arrays to RGB ``np.uint8 [H, W, 3]``, with a name for each.

    Args:
        images: file paths, or ``np.uint8 [H, W, 3]`` arrays in ``input_format`` channel order.
        input_format: ``"RGB"`` or ``"BGR"``; applies to arrays only (files are always decoded
            to RGB).
        apply_exif_orientation: decode files in their displayed orientation (EXIF Orientation
            applied, the default for photos without annotations); False keeps the stored pixels
            (the dataset rule: annotations refer to them).
    Raises:
        DatasetIssue: a missing, empty, truncated or undecodable file (the message names it).
        TypeError / ValueError: an input that is not a path or a ``uint8 [H, W, 3]`` array.
    """
    _check_format(input_format)
    return [_as_rgb(image, i, input_format, apply_exif_orientation)
            for i, image in enumerate(images)]


class BatchPredictor:
    """Letterbox, batch and run a model in eval mode under ``torch.inference_mode``.

    Args:
        model: a built model (``build_model``); put in eval mode here. Its own settings apply:
            ``score_thresh`` (``TEST.SCORE_THRESH``), detections per image, mask threshold.
        image_size: ``S`` of the square model input (``INPUT.SIZE``), as in training.
        batch_size: images per forward pass (``TEST.IMS_PER_BATCH``).
        return_rle: ask the model for ``masks_rle`` (COCO RLE, ``str`` counts) instead of dense
            masks; dense ``[N, H, W]`` masks of a large photo take ``N * H * W`` bytes.
        apply_exif_orientation: decode image files with their EXIF Orientation applied (default),
            so results are in the displayed orientation; False: in the stored pixel grid.

    Calling it returns, per image, the instances of ``docs/interfaces.md`` on the CPU:
    ``boxes`` ``float32 [N, 4]`` xyxy in original-image pixels, ``scores`` ``float32 [N]``,
    ``classes`` ``int64 [N]`` (0..45 = Fashionpedia category ids), and ``masks`` ``bool [N, H, W]``
    at the original size or ``masks_rle``; with MODEL.ROI_ATTRIBUTE_HEAD.ENABLED also
    ``attribute_scores`` ``float32 [N, 294]`` (dense attribute order) and ``attribute_ids`` (per
    instance the sorted sparse Fashionpedia ids scoring at least its SCORE_THRESH).
    """

    def __init__(self, model: nn.Module, *, image_size: int, batch_size: int = 4,
                 return_rle: bool = False, apply_exif_orientation: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.batch_size = int(batch_size)
        self.return_rle = bool(return_rle)
        self.apply_exif_orientation = bool(apply_exif_orientation)
        # the evaluation mapper: no flip / grayscale, and no annotations to read
        self.mapper = DatasetMapper(image_size=image_size, is_train=False,
                                    attribute_id_to_index={})

    @classmethod
    def from_config(cls, cfg: Any, return_rle: bool | None = None) -> "BatchPredictor":
        """Build the model of ``cfg`` with ``MODEL.WEIGHTS`` on ``MODEL.DEVICE``.

        ``TEST.SCORE_THRESH``, ``TEST.IMS_PER_BATCH`` and ``INPUT.SIZE`` come from ``cfg``;
        ``return_rle`` defaults to ``TEST.RETURN_RLE``.
        """
        from .modeling import build_model  # keeps ``import effdetmask.predictor`` light

        if not cfg.MODEL.WEIGHTS:
            logger.warning("MODEL.WEIGHTS is empty: the model has random weights and its "
                           "predictions are noise")
        return cls(build_model(cfg, inference_only=True), image_size=cfg.INPUT.SIZE,
                   batch_size=cfg.TEST.IMS_PER_BATCH,
                   return_rle=cfg.TEST.RETURN_RLE if return_rle is None else return_rle)

    def _batches(self, images: Sequence[ImageInput],
                 input_format: str) -> Iterator[List[Dict[str, Any]]]:
        """Mapper outputs, one batch at a time, so only one batch of images is decoded at once."""
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch = []
            loaded = load_images_rgb(chunk, input_format,
                                     apply_exif_orientation=self.apply_exif_orientation)
            for k, (rgb, name) in enumerate(loaded):
                h, w = rgb.shape[:2]
                # the mapper's "image" entry (cache-record form) skips a second decode
                batch.append(self.mapper({"image": rgb, "height": h, "width": w,
                                          "image_id": start + k, "file_name": name}))
            yield batch

    def __call__(self, images: Sequence[ImageInput],
                 input_format: str = "RGB") -> List[Dict[str, Any]]:
        """Predict instances for each image.

        Args:
            images: file paths and/or ``np.uint8 [H, W, 3]`` arrays (sizes may differ).
            input_format: channel order of the arrays, ``"RGB"`` (default) or ``"BGR"``
                (``cv2.imread``); files are always decoded as RGB.
        Returns:
            one instances dict per image, in order (see the class docstring), CPU tensors.
        Raises:
            DatasetIssue: a missing or corrupt image file, naming it.
            TypeError / ValueError: an input of the wrong type, shape or dtype.
        """
        if isinstance(images, (str, os.PathLike, np.ndarray)):
            raise TypeError("pass a list of images (a single path or array must be wrapped in "
                            "a list)")
        _check_format(input_format)  # before any decoding or model work
        results: List[Dict[str, Any]] = []
        with torch.inference_mode():
            for batch in self._batches(images, input_format):
                outputs = self.model(batch, return_rle=self.return_rle)
                results.extend(_to_cpu(o["instances"]) for o in outputs)
        return results


def _to_cpu(instances: Dict[str, Any]) -> Dict[str, Any]:
    """Tensors to the CPU, so GPU memory is freed batch by batch; RLE lists stay as they are."""
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in instances.items()}
