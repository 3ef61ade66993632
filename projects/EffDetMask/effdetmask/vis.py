"""Drawing of instance predictions: a full-image overlay and a per-instance panel (paper figures).

Images are ``np.uint8 [H, W, 3]`` **RGB** everywhere here; :func:`save_png` converts to OpenCV's
BGR when writing. Instances follow the model output contract (``docs/interfaces.md``): ``boxes``
xyxy in the image's pixels, ``classes`` 0..K-1, optional ``scores``, and ``masks``
(bool ``[N, H, W]``) or ``masks_rle``; tensors or arrays.
"""

from __future__ import annotations

import math
import os
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from .data.taxonomy import class_colors
from .structures.masks import coco_rle_decode

__all__ = ["Visualizer", "save_png"]

Color = Tuple[int, int, int]
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def save_png(path: str, image: np.ndarray) -> None:
    """Write an RGB ``np.uint8 [H, W, 3]`` image as PNG (parent folders are created).

    Raises:
        OSError: when OpenCV cannot write the file.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    if not cv2.imwrite(path, cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write PNG {path}")


class Visualizer:
    """Draws instances in class colours with names and scores.

    Args:
        class_names: K names, index = class id (from metadata ``thing_classes``).
        colors: K RGB colours 0..255 (metadata ``thing_colors``); default: the project palette
            for K classes.
        alpha: mask opacity in ``[0, 1]``.
        font_scale: OpenCV font scale of the labels.
        line_width: box line width in pixels.
        attribute_names: names by dense attribute index (metadata ``attribute_names``): instances
            with ``attribute_scores`` get their top attributes listed under the class label.
        max_attributes: at most this many attributes per instance, best first.
        attribute_thresh: only attributes scoring at least this are listed.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        colors: Optional[Sequence[Color]] = None,
        alpha: float = 0.5,
        font_scale: float = 0.45,
        line_width: int = 2,
        attribute_names: Optional[Sequence[str]] = None,
        max_attributes: int = 3,
        attribute_thresh: float = 0.5,
    ) -> None:
        self.class_names = list(class_names)
        self.colors: List[Color] = [tuple(int(v) for v in c) for c in (
            colors if colors is not None else class_colors(len(self.class_names)))]
        if len(self.colors) < len(self.class_names):
            raise ValueError(f"{len(self.colors)} colours for {len(self.class_names)} classes")
        self.alpha = float(alpha)
        self.font_scale = float(font_scale)
        self.line_width = int(line_width)
        self.attribute_names = list(attribute_names) if attribute_names is not None else None
        self.max_attributes = int(max_attributes)
        self.attribute_thresh = float(attribute_thresh)

    @classmethod
    def from_metadata(cls, metadata: Any, **kwargs: Any) -> "Visualizer":
        """Visualizer from dataset metadata: ``thing_classes`` and optional ``thing_colors`` and
        ``attribute_names``."""
        kwargs.setdefault("attribute_names", metadata.get("attribute_names", None))
        return cls(metadata.get("thing_classes"), metadata.get("thing_colors"), **kwargs)

    # ------------------------------------------------------------------------ helpers
    def _unpack(
        self, instances: Mapping[str, Any], height: int, width: int
    ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
        """-> boxes float ``[N, 4]``, classes int ``[N]``, scores ``[N]`` or None, bool masks
        ``[N, height, width]`` or None."""
        boxes = _as_numpy(instances["boxes"]).reshape(-1, 4).astype(np.float32)
        classes = _as_numpy(instances["classes"]).reshape(-1).astype(np.int64)
        scores = instances.get("scores")
        scores = None if scores is None else _as_numpy(scores).reshape(-1).astype(np.float32)
        masks = None
        if instances.get("masks") is not None:
            masks = _as_numpy(instances["masks"]).astype(bool).reshape(-1, height, width)
        elif instances.get("masks_rle") is not None:
            masks = np.stack([coco_rle_decode(r, height, width).astype(bool)
                              for r in instances["masks_rle"]]) if len(classes) else None
        return boxes, classes, scores, masks

    def _label(self, cls_id: int, score: Optional[float]) -> str:
        name = self.class_names[cls_id] if 0 <= cls_id < len(self.class_names) else str(cls_id)
        return name if score is None else f"{name} {score:.2f}"

    def _attribute_lines(self, scores: Any) -> List[str]:
        """``"name .87"`` of an instance's best attributes (``scores`` ``[294]``), best first."""
        if self.attribute_names is None or scores is None:
            return []
        scores = _as_numpy(scores).reshape(-1)
        best = np.argsort(-scores, kind="stable")[:self.max_attributes]
        return [f"{self.attribute_names[k]} {scores[k]:.2f}" for k in best
                if scores[k] >= self.attribute_thresh and k < len(self.attribute_names)]

    def _put_label(self, image: np.ndarray, text: str, x: int, y: int, color: Color,
                   font_scale: Optional[float] = None) -> int:
        """Label with a filled background, bottom-left at ``(x, y)`` moved inside the image;
        returns the y of the label's bottom."""
        font_scale = self.font_scale if font_scale is None else font_scale
        (tw, th), base = cv2.getTextSize(text, _FONT, font_scale, 1)
        h, w = image.shape[:2]
        x = int(min(max(x, 0), max(w - tw - 2, 0)))
        y = int(min(max(y, th + base + 2), h - 1))
        cv2.rectangle(image, (x, y - th - base - 2), (x + tw + 2, y), color, thickness=-1)
        # dark text on light colours, white on dark ones (ITU-R BT.601 luma)
        luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        text_color = (0, 0, 0) if luma > 140 else (255, 255, 255)
        cv2.putText(image, text, (x + 1, y - base - 1), _FONT, font_scale, text_color, 1,
                    cv2.LINE_AA)
        return y

    def _blend(self, image: np.ndarray, mask: np.ndarray, color: Color) -> None:
        region = image[mask].astype(np.float32)
        image[mask] = np.round(region * (1 - self.alpha) + np.float32(color) * self.alpha).astype(
            np.uint8)

    # ------------------------------------------------------------------------ drawing
    def draw_instances(self, image: np.ndarray, instances: Mapping[str, Any]) -> np.ndarray:
        """All instances on one image: translucent masks, boxes, ``"name score"`` labels and,
        for instances with ``attribute_scores`` (and ``attribute_names`` given), their top
        attributes one per line under the label, inside the box.

        Args:
            image: RGB ``np.uint8 [H, W, 3]`` (not modified).
            instances: see the module docstring; coordinates in this image's pixels.
        Returns:
            RGB ``np.uint8 [H, W, 3]``.
        """
        out = np.array(image, dtype=np.uint8, copy=True)
        h, w = out.shape[:2]
        boxes, classes, scores, masks = self._unpack(instances, h, w)
        if len(classes) == 0:
            return out
        if masks is not None:
            # large masks first so that small parts (sleeves, collars) stay visible on top
            for i in np.argsort(-masks.reshape(len(masks), -1).sum(1), kind="stable"):
                self._blend(out, masks[i], self.colors[classes[i] % len(self.colors)])
        for i in range(len(classes)):
            color = self.colors[classes[i] % len(self.colors)]
            x0, y0, x1, y1 = (int(round(v)) for v in boxes[i])
            cv2.rectangle(out, (x0, y0), (x1, y1), color, self.line_width)
            score = None if scores is None else float(scores[i])
            y = self._put_label(out, self._label(int(classes[i]), score), x0, y0 - 1, color)
            attrs = instances.get("attribute_scores")
            small = self.font_scale * 0.85
            for line in self._attribute_lines(None if attrs is None else attrs[i]):
                (_, th), base = cv2.getTextSize(line, _FONT, small, 1)
                y = self._put_label(out, line, x0, y + th + base + 3, color, small)
        return out

    def draw_panel(
        self,
        image: np.ndarray,
        instances: Mapping[str, Any],
        cell_size: int = 160,
        columns: int = 4,
        margin: float = 0.1,
    ) -> np.ndarray:
        """One cell per instance: its box's crop with only its mask overlaid, and its label.

        Args:
            image: RGB ``np.uint8 [H, W, 3]``.
            instances: see the module docstring.
            cell_size: side of each square cell in pixels (crop letterboxed into it).
            columns: cells per row (fewer when there are fewer instances).
            margin: context around each box, as a fraction of its larger side.
        Returns:
            RGB ``np.uint8 [rows * cell_size, min(N, columns) * cell_size, 3]``,
            ``rows = ceil(N / columns)``; with no instance, one grey cell.
        """
        h, w = image.shape[:2]
        boxes, classes, scores, masks = self._unpack(instances, h, w)
        n = len(classes)
        if n == 0:
            return np.full((cell_size, cell_size, 3), 127, dtype=np.uint8)
        cols = min(n, columns)
        rows = math.ceil(n / cols)
        panel = np.full((rows * cell_size, cols * cell_size, 3), 255, dtype=np.uint8)
        for i in range(n):
            color = self.colors[classes[i] % len(self.colors)]
            x0, y0, x1, y1 = boxes[i]
            pad = margin * max(x1 - x0, y1 - y0, 1.0)
            cx0, cy0 = int(max(0, math.floor(x0 - pad))), int(max(0, math.floor(y0 - pad)))
            cx1, cy1 = int(min(w, math.ceil(x1 + pad))), int(min(h, math.ceil(y1 + pad)))
            cx1, cy1 = max(cx1, cx0 + 1), max(cy1, cy0 + 1)
            crop = np.array(image[cy0:cy1, cx0:cx1], dtype=np.uint8, copy=True)
            if masks is not None:
                self._blend(crop, masks[i, cy0:cy1, cx0:cx1], color)
            scale = min(cell_size / crop.shape[1], cell_size / crop.shape[0])
            cw = max(1, min(cell_size, int(round(crop.shape[1] * scale))))
            ch = max(1, min(cell_size, int(round(crop.shape[0] * scale))))
            cell = np.full((cell_size, cell_size, 3), 255, dtype=np.uint8)
            cell[:ch, :cw] = cv2.resize(crop, (cw, ch), interpolation=cv2.INTER_AREA)
            cv2.rectangle(cell, (0, 0), (cell_size - 1, cell_size - 1), color, 1)
            score = None if scores is None else float(scores[i])
            self._put_label(cell, self._label(int(classes[i]), score), 0, cell_size - 1, color)
            r, c = divmod(i, cols)
            panel[r * cell_size:(r + 1) * cell_size, c * cell_size:(c + 1) * cell_size] = cell
        return panel
