"""Model size and cost: parameters per part, FLOPs (fvcore) at the input size, checkpoint size."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

from ..modeling.frozen_bn import FROZEN_BN_TYPES

__all__ = ["summarize_model", "parameter_counts", "format_summary"]

logger = logging.getLogger(__name__)

# (module-name prefix, part) in matching order; the first matching prefix names a tensor's part
PARTS: List[Tuple[str, str]] = [
    ("backbone.body.", "backbone"),
    ("backbone.fpn.", "BiFPN"),
    ("proposal_generator.class_net.", "class head"),
    ("proposal_generator.box_net.", "box head"),
    ("roi_heads.mask_head.", "mask head"),
    ("roi_heads.attribute_head.", "attribute head"),
    ("attribute_head.", "attribute head"),
    ("net.backbone.body.", "backbone"),
    ("net.backbone.fpn.", "FPN"),
    ("net.rpn.", "RPN"),
    ("net.roi_heads.box_", "box head"),
    ("net.roi_heads.mask_", "mask head"),
]


def _part(name: str) -> str:
    for prefix, part in PARTS:
        if name.startswith(prefix):
            return part
    return name.split(".")[0]


def _weights(model: nn.Module) -> Iterator[Tuple[str, torch.Tensor, bool]]:
    """(name, tensor, trainable) of every weight, frozen-BN affine buffers included: freezing BN
    turns its weight/bias into buffers, but they are still parameters of the network."""
    for name, p in model.named_parameters():
        yield name, p, p.requires_grad
    for mod_name, m in model.named_modules():
        if isinstance(m, FROZEN_BN_TYPES):
            yield f"{mod_name}.weight", m.weight, False
            yield f"{mod_name}.bias", m.bias, False


def parameter_counts(model: nn.Module) -> Dict[str, int]:
    """Weights per part (see ``PARTS``), plus ``"total"`` and ``"trainable"``."""
    counts: Dict[str, int] = {}
    total = trainable = 0
    for name, t, train in _weights(model):
        counts[_part(name)] = counts.get(_part(name), 0) + t.numel()
        total += t.numel()
        trainable += t.numel() if train else 0
    counts["total"], counts["trainable"] = total, trainable
    return counts


def checkpoint_bytes(model: nn.Module) -> int:
    """Size of ``torch.save(model.state_dict())`` on disk."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.pth")
        torch.save(model.state_dict(), path)
        return os.path.getsize(path)


@contextlib.contextmanager
def _keep_all_detections(model: nn.Module) -> Iterator[None]:
    """Score threshold 0, so the mask head runs on the maximum number of detections (the cost a
    trained model pays) rather than on the few an untrained one scores above threshold."""
    saved = []
    for m in model.modules():
        if hasattr(m, "score_thresh") and isinstance(m.score_thresh, float):
            saved.append((m, m.score_thresh))
            m.score_thresh = 0.0
    try:
        yield
    finally:
        for m, value in saved:
            m.score_thresh = value


class _TensorInput(nn.Module):
    """fvcore traces tensors only: wrap the list-of-dicts model input around one image."""

    def __init__(self, model: nn.Module, size: int) -> None:
        super().__init__()
        self.model, self.size = model, size

    def forward(self, image: torch.Tensor):
        out = self.model([{"image": image, "height": self.size, "width": self.size, "scale": 1.0}])
        inst = out[0]["instances"]
        return inst["boxes"], inst["scores"], inst["masks"]


def count_flops(model: nn.Module, input_size: int) -> Tuple[Optional[int], Dict[str, int]]:
    """fvcore FLOPs (one multiply-add = 1) of one ``input_size``² image in eval mode, total and per
    part; ``(None, {})`` if tracing fails. Ops fvcore has no formula for are skipped (logged)."""
    from fvcore.nn import FlopCountAnalysis

    device = next(model.parameters()).device
    image = torch.randint(0, 256, (3, input_size, input_size), dtype=torch.uint8, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _keep_all_detections(model):
            analysis = FlopCountAnalysis(_TensorInput(model, input_size), (image,))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            total = int(analysis.total())
            skipped = analysis.unsupported_ops()
            per_module = analysis.by_module()
    except Exception as e:  # tracing arbitrary models can fail in many ways; size still counts
        logger.warning("FLOP count failed (%s: %s)", type(e).__name__, e)
        return None, {}
    finally:
        model.train(was_training)
    if skipped:
        logger.info("FLOPs skip ops without a formula: %s", dict(skipped))
    parts: Dict[str, int] = {}
    for prefix, part in PARTS:
        full = "model." + prefix
        # a prefix is a module ("backbone.fpn.") or a family of sibling modules ("box_" matches
        # box_head and box_predictor); count each module once, not its descendants again
        flops = sum(
            v for name, v in per_module.items()
            if name == full.rstrip(".")
            or (not full.endswith(".") and name.startswith(full) and "." not in name[len(full):])
        )
        if flops:
            parts[part] = parts.get(part, 0) + int(flops)
    return total, parts


def summarize_model(model: nn.Module, input_size: int, flops: bool = True) -> Dict[str, object]:
    """``{"params": {part: n}, "total_params", "trainable_params", "flops", "flops_by_part",
    "checkpoint_bytes", "input_size"}``; FLOPs at batch 1, eval, at most 100 detections."""
    counts = parameter_counts(model)
    total_flops, by_part = count_flops(model, input_size) if flops else (None, {})
    return {
        "params": {k: v for k, v in counts.items() if k not in ("total", "trainable")},
        "total_params": counts["total"],
        "trainable_params": counts["trainable"],
        "flops": total_flops,
        "flops_by_part": by_part,
        "checkpoint_bytes": checkpoint_bytes(model),
        "input_size": input_size,
    }


def format_summary(name: str, summary: Dict[str, object]) -> str:
    """A text table: one row per part (params, GFLOPs), then the totals."""
    rows = [("part", "params (M)", "GFLOPs")]
    by_part = summary["flops_by_part"]
    for part, n in summary["params"].items():
        f = by_part.get(part)
        rows.append((part, f"{n / 1e6:.3f}", f"{f / 1e9:.2f}" if f else "-"))
    total_flops = summary["flops"]
    rows.append(("total", f"{summary['total_params'] / 1e6:.3f}",
                 f"{total_flops / 1e9:.2f}" if total_flops else "-"))
    rows.append(("trainable", f"{summary['trainable_params'] / 1e6:.3f}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{name} @ {summary['input_size']}x{summary['input_size']}, checkpoint "
             f"{summary['checkpoint_bytes'] / 2**20:.1f} MiB"]
    for k, r in enumerate(rows):
        lines.append(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
        if k == 0 or k == len(rows) - 3:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)
