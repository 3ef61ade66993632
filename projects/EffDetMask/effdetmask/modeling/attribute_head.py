"""Attribute head: a multi-label prediction over Fashionpedia's 294 attributes per RoI.

The learned part is the module (pooled RoI features -> logits); which RoIs train it, the loss and
the thresholded ids are plain functions, shared by EffDetMask's RoI heads and the baseline, so both
models predict attributes the same way (``docs/interfaces.md``).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from ..data.taxonomy import NUM_ATTRIBUTES, attribute_index_to_id, category_has_attributes

__all__ = [
    "AttributeHead",
    "ATTRIBUTE_LOSSES",
    "attribute_loss",
    "attribute_targets",
    "attribute_ids_from_scores",
]

ATTRIBUTE_LOSSES = ("bce", "focal")


class AttributeHead(nn.Module):
    """``num_conv`` x (3x3 conv + ReLU) -> flatten -> fc + ReLU -> linear to ``num_attributes``.

    ``forward(x: float [K, C, P, P] pooled RoI features) -> float [K, num_attributes]`` logits, one
    independent sigmoid per attribute (dense index order of
    :func:`effdetmask.data.taxonomy.attribute_index_to_id`).

    Args:
        in_channels: ``C`` of the pooled features; pooler_resolution: ``P``.
        conv_dim: width of the 3x3 convs; num_conv: how many (0 = none).
        fc_dim: width of the hidden fully connected layer.
        prior_prob: initial probability of every attribute (the predictor's bias): attributes are
            sparse (a garment carries a handful of 294), so a 0.5 start would spend the first steps
            unlearning positives nobody labelled.
    """

    def __init__(self, *, in_channels: int, pooler_resolution: int = 7, conv_dim: int = 64,
                 num_conv: int = 1, fc_dim: int = 256, num_attributes: int = NUM_ATTRIBUTES,
                 prior_prob: float = 0.01) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        for k in range(num_conv):
            layers += [nn.Conv2d(in_channels if k == 0 else conv_dim, conv_dim, 3, padding=1),
                       nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        width = (conv_dim if num_conv else in_channels) * pooler_resolution ** 2
        self.fc = nn.Linear(width, fc_dim)
        self.predictor = nn.Linear(fc_dim, num_attributes)
        for m in self.convs:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.kaiming_uniform_(self.fc.weight, a=1)
        nn.init.zeros_(self.fc.bias)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.constant_(self.predictor.bias, -float(torch.log(torch.tensor(
            (1 - prior_prob) / prior_prob))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x).flatten(1)
        return self.predictor(F.relu(self.fc(x)))


def attribute_targets(
    targets: Sequence[Dict[str, torch.Tensor]], matched: Sequence[torch.Tensor],
    num_classes: int,
) -> Dict[str, torch.Tensor]:
    """Targets of the training RoIs matched to GT instances.

    Args:
        targets: per image ``classes`` int64 ``[N_i]``, ``attributes`` float ``[N_i, A]``
            (multi-hot, dense order) and ``attributes_known`` bool ``[N_i]``; an image without
            ``attributes`` has unknown attributes, one without ``attributes_known`` known ones.
        matched: per image int64 ``[M_i]``, the GT instance of each RoI.
    Returns:
        ``attributes`` float ``[sum M_i, A]`` and ``valid`` bool ``[sum M_i]``: whether a RoI
        takes part in the loss (its GT category carries attributes in the taxonomy and its GT
        attributes are known).
    """
    has_attrs = torch.tensor(category_has_attributes(num_classes), dtype=torch.bool)
    attrs, valid = [], []
    for tgt, idx in zip(targets, matched):
        n = tgt["classes"].shape[0]
        a = tgt.get("attributes")
        known = tgt.get("attributes_known")
        if a is None:
            a = tgt["classes"].new_zeros(n, NUM_ATTRIBUTES, dtype=torch.float32)
            known = torch.zeros(n, dtype=torch.bool, device=idx.device)
        elif known is None:
            known = torch.ones(n, dtype=torch.bool, device=idx.device)
        cls_ok = has_attrs.to(idx.device)[tgt["classes"][idx]]
        attrs.append(a[idx].float())
        valid.append(known.to(idx.device).bool()[idx] & cls_ok)
    return {"attributes": torch.cat(attrs), "valid": torch.cat(valid)}


def attribute_loss(logits: torch.Tensor, attributes: torch.Tensor, valid: torch.Tensor, *,
                   loss: str = "bce", focal_alpha: float = 0.25,
                   focal_gamma: float = 2.0) -> torch.Tensor:
    """Mean per-attribute loss over the valid RoIs; 0 (still in the graph) when none is valid.

    Args:
        logits: float ``[K, A]``; attributes: float ``[K, A]`` 0/1; valid: bool ``[K]``.
        loss: ``"bce"`` (sigmoid cross-entropy) or ``"focal"`` (sigmoid focal loss,
            ``focal_alpha`` / ``focal_gamma``).
    """
    if loss not in ATTRIBUTE_LOSSES:
        raise ValueError(f"attribute loss must be one of {ATTRIBUTE_LOSSES}, got {loss!r}")
    logits = logits[valid].float()
    if logits.numel() == 0:
        return logits.sum() * 0.0
    target = attributes[valid].to(logits.dtype)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    return sigmoid_focal_loss(logits, target, alpha=focal_alpha, gamma=focal_gamma,
                              reduction="mean")


def attribute_ids_from_scores(scores: torch.Tensor, thresh: float) -> List[List[int]]:
    """Per row of ``scores`` (float ``[N, A]``, dense order) the sorted sparse Fashionpedia ids
    of the attributes scoring ``>= thresh``."""
    index_to_id = attribute_index_to_id()
    rows, cols = torch.nonzero(scores >= thresh, as_tuple=True)
    out: List[List[int]] = [[] for _ in range(scores.shape[0])]
    for r, c in zip(rows.tolist(), cols.tolist()):
        out[r].append(index_to_id[c])
    return [sorted(ids) for ids in out]
