"""End-of-run pictures: ground truth beside predictions for the first images of a test set."""

from __future__ import annotations

import logging
import os
from typing import List

import torch

from ..data.build import get_detection_dataset_dicts
from ..data.catalog import MetadataCatalog
from ..predictor import BatchPredictor, load_images_rgb
from ..vis import Visualizer
from ..vis_pages import write_instance_pngs

logger = logging.getLogger(__name__)

__all__ = ["write_visualizations"]


def write_visualizations(
    model: torch.nn.Module,
    dataset_name: str,
    output_dir: str,
    *,
    image_size: int,
    num_images: int = 4,
    batch_size: int = 4,
    min_score: float = 0.0,
) -> List[str]:
    """Writes ``<image>_gt.png`` (ground truth | predictions) and ``<image>_panel.png`` pages.

    Args:
        model: a built model (any meta-architecture); put in eval mode here.
        dataset_name: a registered dataset; its first ``num_images`` images are drawn.
        min_score: predictions scoring below this are not drawn (``TEST.VIS_SCORE_THRESH``).
    Returns:
        Paths of the PNGs written.
    """
    records = get_detection_dataset_dicts([dataset_name])[:num_images]
    predictor = BatchPredictor(model, image_size=image_size, batch_size=batch_size, return_rle=True)
    vis = Visualizer.from_metadata(MetadataCatalog.get(dataset_name))
    images = [rgb for rgb, _ in load_images_rgb([r["file_name"] for r in records])]
    os.makedirs(output_dir, exist_ok=True)
    written: List[str] = []
    for record, image, inst in zip(records, images, predictor(images)):
        prefix = os.path.join(
            output_dir, os.path.splitext(os.path.basename(record["file_name"]))[0]
        )
        written += write_instance_pngs(
            vis, prefix, image, inst, record, max_size=0, panel=True, noise=False,
            min_score=min_score,
        )
    logger.info("wrote %d visualisations of %s to %s", len(written), dataset_name, output_dir)
    return written
