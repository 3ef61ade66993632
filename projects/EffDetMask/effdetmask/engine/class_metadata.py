"""The classes a model predicts: recorded with its final weights, read back to draw and report.

Training writes the class names and the dataset-id map of its first training dataset into the
header of ``model_final.safetensors`` (:func:`training_class_metadata`). Whoever uses the weights
later (``demo.py``) reads them back with :func:`model_class_metadata`, so a model trained on any
dataset draws its own labels and writes results in its own category ids.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Optional

from ..data.builtin import register_all_from_cfg
from ..data.catalog import MetadataCatalog
from ..modeling.weights import read_weights_metadata

__all__ = ["CLASSES_KEY", "IDS_KEY", "training_class_metadata", "model_class_metadata"]

logger = logging.getLogger(__name__)

# keys of the weights file's metadata (JSON strings) and of the returned metadata
CLASSES_KEY = "thing_classes"
IDS_KEY = "thing_dataset_id_to_contiguous_id"


def _checked(names: Optional[List[str]], ids: Optional[Dict[Any, Any]], num_classes: int,
             source: str) -> Optional[Dict[str, Any]]:
    """The metadata of ``names`` (identity ids if none given), or None if there are no names or
    not ``num_classes`` of them."""
    if not names:
        return None
    if len(names) != num_classes:
        logger.warning("%s has %d class names but MODEL.NUM_CLASSES is %d: they are not used",
                       source, len(names), num_classes)
        return None
    ids = ids or {i: i for i in range(num_classes)}
    return {CLASSES_KEY: list(names), IDS_KEY: {int(k): int(v) for k, v in ids.items()}}


def _catalog_classes(name: str, num_classes: int) -> Optional[Dict[str, Any]]:
    meta = MetadataCatalog.get(name)
    return _checked(meta.get(CLASSES_KEY), meta.get(IDS_KEY), num_classes, f"dataset {name}")


def training_class_metadata(cfg) -> Dict[str, str]:
    """What to record with the weights of a model trained on ``cfg``: the first DATASETS.TRAIN
    dataset's ``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` as JSON strings (a
    safetensors header holds strings only); ``{}`` when its metadata has no class names."""
    if not cfg.DATASETS.TRAIN:
        return {}
    found = _catalog_classes(cfg.DATASETS.TRAIN[0], cfg.MODEL.NUM_CLASSES)
    return {} if found is None else {k: json.dumps(v) for k, v in found.items()}


def model_class_metadata(cfg) -> Dict[str, Any]:
    """``{"thing_classes": K names, "thing_dataset_id_to_contiguous_id": {dataset id: 0..K-1}}``
    of the model ``cfg`` builds, ``K = MODEL.NUM_CLASSES``.

    From, in order: the metadata recorded in MODEL.WEIGHTS (a ``.safetensors`` file written by
    training); the config's first DATASETS.TRAIN dataset in the catalog (the built-ins are
    registered for ``cfg`` first; a dataset registered by the caller is used as it is); else
    ``"class 0" .. "class K-1"`` with identity ids, and a warning.
    """
    num_classes = cfg.MODEL.NUM_CLASSES
    recorded = read_weights_metadata(cfg.MODEL.WEIGHTS) if cfg.MODEL.WEIGHTS else {}
    found = _checked(json.loads(recorded.get(CLASSES_KEY, "[]")),
                     json.loads(recorded.get(IDS_KEY, "{}")), num_classes, cfg.MODEL.WEIGHTS)
    if found is not None:
        return found
    if cfg.DATASETS.TRAIN:
        register_all_from_cfg(cfg)
        found = _catalog_classes(cfg.DATASETS.TRAIN[0], num_classes)
        if found is not None:
            return found
    logger.warning("no class names for this model (none recorded in MODEL.WEIGHTS, none in the "
                   "metadata of DATASETS.TRAIN): labels are drawn as 'class <id>'")
    return {CLASSES_KEY: [f"class {i}" for i in range(num_classes)],
            IDS_KEY: {i: i for i in range(num_classes)}}
