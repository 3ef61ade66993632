"""Datasets: catalogs, loaders, taxonomy, image reading and bad-input handling.

Importing this package registers the built-in datasets (lazily, no I/O) under the default root;
``builtin.register_all_from_cfg(cfg)`` re-registers them for a config's root and options.
"""

from .builtin import dataset_root, register_all, register_all_from_cfg
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .coco_json import load_coco_json, register_coco_instances
from .validation import DatasetIssue, SkipReport

__all__ = [
    "DatasetCatalog",
    "MetadataCatalog",
    "Metadata",
    "DatasetIssue",
    "SkipReport",
    "dataset_root",
    "register_all",
    "register_all_from_cfg",
    "load_coco_json",
    "register_coco_instances",
]

register_all()
