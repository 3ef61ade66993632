"""Mask R-CNN mask head on RoIAlign features of the BiFPN, and its plain-function helpers.

The learned part is the module; choosing training RoIs, building targets, the loss and pasting
masks into images are functions, as in torchvision's ``roi_heads``.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection._utils import Matcher
from torchvision.ops import MultiScaleRoIAlign, box_iou, roi_align

from .effdet_utils import ShapeSpec
from .registry import ROI_MASK_HEAD_REGISTRY

__all__ = [
    "MaskRCNNConvUpsampleHead",
    "select_training_rois",
    "mask_rcnn_targets",
    "mask_rcnn_loss",
    "paste_masks_in_image",
]

# On GPU, paste this many mask pixels at once; on CPU one mask at a time over its own box is
# fastest.
_PASTE_GPU_MEMORY_PIXELS = 1 << 28


@ROI_MASK_HEAD_REGISTRY.register()
class MaskRCNNConvUpsampleHead(nn.Module):
    """RoIAlign (FPN level mapping) -> ``num_conv`` x (3x3 conv + ReLU) -> 2x deconv + ReLU -> 1x1.

    ``forward(features, boxes_xyxy, classes) -> float [sum N_i, 2R, 2R]``: mask logits of the given
    class for each box, ``R = pooler_resolution``. ``boxes_xyxy`` are per image ``[N_i, 4]`` in
    input pixels, ``classes`` per image ``int64 [N_i]`` 0..num_classes-1.
    """

    def __init__(
        self,
        *,
        input_shape: Dict[str, ShapeSpec],
        in_levels: Sequence[int] = (3, 4, 5, 6),
        image_size: int = 512,
        num_classes: int = 46,
        pooler_resolution: int = 14,
        sampling_ratio: int = 2,
        conv_dim: int = 256,
        num_conv: int = 4,
    ) -> None:
        super().__init__()
        self.in_features = [f"p{lvl}" for lvl in in_levels]
        missing = [n for n in self.in_features if n not in input_shape]
        if missing:
            raise ValueError(
                f"ROI_MASK_HEAD.IN_LEVELS {list(in_levels)} needs {missing}; the backbone gives "
                f"{sorted(input_shape)}"
            )
        # torchvision's pooler maps a box to level floor(4 + log2(sqrt(area) / 224)), clamped to the
        # given levels: the canonical FPN assignment of the Mask R-CNN paper
        self.pooler = MultiScaleRoIAlign(
            featmap_names=self.in_features, output_size=pooler_resolution,
            sampling_ratio=sampling_ratio,
        )
        self.image_size = image_size
        in_ch = input_shape[self.in_features[0]].channels
        layers: List[nn.Module] = []
        for k in range(num_conv):
            layers += [nn.Conv2d(in_ch if k == 0 else conv_dim, conv_dim, 3, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        last = conv_dim if num_conv else in_ch
        self.deconv = nn.ConvTranspose2d(last, last, kernel_size=2, stride=2)
        self.predictor = nn.Conv2d(last, num_classes, kernel_size=1)
        for m in [*self.convs, self.deconv]:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # small logits at the start: detectron2's and torchvision's predictor init
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.ROI_MASK_HEAD
        return dict(
            input_shape=input_shape,
            in_levels=tuple(head.IN_LEVELS),
            image_size=cfg.INPUT.SIZE,
            num_classes=cfg.MODEL.NUM_CLASSES,
            pooler_resolution=head.POOLER_RESOLUTION,
            sampling_ratio=head.POOLER_SAMPLING_RATIO,
            conv_dim=head.CONV_DIM,
            num_conv=head.NUM_CONV,
        )

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        boxes_xyxy: List[torch.Tensor],
        classes: List[torch.Tensor],
    ) -> torch.Tensor:
        feats = {n: features[n] for n in self.in_features}
        sizes = [(self.image_size, self.image_size)] * len(boxes_xyxy)
        dtype = feats[self.in_features[0]].dtype
        x = self.pooler(feats, [b.to(dtype) for b in boxes_xyxy], sizes)
        x = F.relu(self.deconv(self.convs(x)))
        logits = self.predictor(x)
        cls = torch.cat(classes) if classes else logits.new_zeros(0, dtype=torch.long)
        return logits[torch.arange(logits.shape[0], device=logits.device), cls]


def select_training_rois(
    detections: List[Dict[str, torch.Tensor]],
    targets: List[Dict[str, torch.Tensor]],
    *,
    score_thresh: float = 0.3,
    iou_thresh: float = 0.5,
    batch_size_per_image: int = 64,
) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Training RoIs: detections above ``score_thresh`` plus the GT boxes, positives only.

    A RoI is positive when its best IoU with a GT box is ``>= iou_thresh`` (the GT boxes always
    are); at most ``batch_size_per_image`` positives are sampled at random per image.

    Returns:
        per image ``rois_xyxy`` float ``[M_i, 4]`` (input pixels, detached) and ``matched`` int64
        ``[M_i]`` (index of the matched GT instance).
    """
    matcher = Matcher(iou_thresh, iou_thresh, allow_low_quality_matches=False)
    rois, matched = [], []
    for det, tgt in zip(detections, targets):
        gt = tgt["boxes"].to(det["boxes"].dtype)
        cand = torch.cat([det["boxes"][det["scores"] > score_thresh].detach(), gt])
        if gt.numel() == 0:
            rois.append(cand.new_zeros(0, 4))
            matched.append(torch.zeros(0, dtype=torch.long, device=cand.device))
            continue
        idx = matcher(box_iou(gt, cand))  # [M]: GT index, or < 0 below the threshold
        pos = torch.nonzero(idx >= 0).squeeze(1)
        if pos.numel() > batch_size_per_image:
            perm = torch.randperm(pos.numel(), device=pos.device)[:batch_size_per_image]
            pos = pos[perm]
        rois.append(cand[pos])
        matched.append(idx[pos])
    return rois, matched


def mask_rcnn_targets(
    gt_masks: List[torch.Tensor], rois_xyxy: List[torch.Tensor], matched: List[torch.Tensor],
    resolution: int = 28,
) -> torch.Tensor:
    """GT masks cropped to each RoI and resized with RoIAlign: ``float [sum M_i, R, R]`` of 0/1.

    ``gt_masks`` per image ``uint8 [N_i, S, S]`` (input resolution), ``matched`` indexes them.
    One ``roi_align`` call for the batch: image ``i``'s indices are offset by the masks before it.
    """
    device = rois_xyxy[0].device if rois_xyxy else torch.device("cpu")
    offsets, start = [], 0
    for m, idx in zip(gt_masks, matched):
        offsets.append(idx + start)
        start += m.shape[0]
    rois = torch.cat(rois_xyxy).float()
    if rois.numel() == 0:
        return torch.zeros(0, resolution, resolution, device=device)
    masks = torch.cat([m for m in gt_masks if m.shape[0]]).to(device=device, dtype=torch.float32)
    index = torch.cat(offsets).to(device=device, dtype=torch.float32)
    crops = roi_align(masks[:, None], torch.cat([index[:, None], rois], dim=1),
                      (resolution, resolution), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    return (crops[:, 0] >= 0.5).float()


def mask_rcnn_loss(mask_logits: torch.Tensor, mask_targets: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel BCE on the GT class channel; 0 (still in the graph) when there are no RoIs."""
    if mask_logits.numel() == 0:
        return mask_logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(mask_logits.float(), mask_targets)


def paste_masks_in_image(
    mask_probs: torch.Tensor, boxes_xyxy: torch.Tensor, height: int, width: int,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Paste ``[N, R, R]`` mask probabilities into ``bool [N, height, width]`` images.

    Each mask is resampled (bilinear, ``grid_sample``) onto the pixels of its box ``boxes_xyxy``
    (``float [N, 4]`` in the *output* image's pixels) and thresholded. Only pixels whose centre lies
    inside the box can be on: the mask says nothing about the image outside its box. On GPU masks
    are pasted in chunks over the chunk's union box; on CPU one at a time over its own box, which
    does the least work (detectron2's strategy).
    """
    n = mask_probs.shape[0]
    out = torch.zeros(n, height, width, dtype=torch.bool, device=mask_probs.device)
    if n == 0 or height == 0 or width == 0:
        return out
    boxes = boxes_xyxy.float()
    if mask_probs.device.type == "cpu":
        chunk = 1
    else:
        chunk = max(1, min(n, _PASTE_GPU_MEMORY_PIXELS // (height * width)))
    for idx in torch.arange(n, device=boxes.device).split(chunk):
        b = boxes[idx]
        x0 = int(b[:, 0].min().floor().clamp(min=0))
        y0 = int(b[:, 1].min().floor().clamp(min=0))
        x1 = int(b[:, 2].max().ceil().clamp(max=width))
        y1 = int(b[:, 3].max().ceil().clamp(max=height))
        if x1 <= x0 or y1 <= y0:
            continue
        out[idx, y0:y1, x0:x1] = _paste_region(mask_probs[idx], b, x0, y0, x1, y1) >= threshold
    return out


def _paste_region(masks: torch.Tensor, boxes: torch.Tensor, x0: int, y0: int, x1: int, y1: int
                  ) -> torch.Tensor:
    """Values of ``masks [K, R, R]`` at the pixel centres of ``[y0:y1, x0:x1]``: ``[K, h, w]``."""
    ys = torch.arange(y0, y1, device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(x0, x1, device=boxes.device, dtype=torch.float32) + 0.5
    bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-6)[:, None]
    bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-6)[:, None]
    gx = (xs[None] - boxes[:, 0:1]) / bw * 2 - 1  # [K, w] in grid_sample's [-1, 1] box frame
    gy = (ys[None] - boxes[:, 1:2]) / bh * 2 - 1  # [K, h]
    k, h, w = boxes.shape[0], ys.numel(), xs.numel()
    grid = torch.stack([gx[:, None, :].expand(k, h, w), gy[:, :, None].expand(k, h, w)], dim=3)
    # border padding: pixels inside the box but beyond the outer mask-cell centres take the edge
    # value instead of fading towards zero; pixels outside the box are cut below
    vals = F.grid_sample(masks[:, None].float(), grid, padding_mode="border", align_corners=False)
    vals = vals[:, 0]
    inside = (gx.abs() <= 1)[:, None, :] & (gy.abs() <= 1)[:, :, None]
    return vals * inside
