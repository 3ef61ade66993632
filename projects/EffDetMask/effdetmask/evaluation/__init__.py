"""COCO box/mask evaluation: the evaluator used by training and ``--eval-only``, and AP on files."""

from .backends import BACKENDS, evaluate_coco_json, format_per_category_table, get_backend
from .coco_evaluator import COCOEvaluator, dataset_dicts_to_coco, instances_to_coco_json

__all__ = [
    "BACKENDS",
    "COCOEvaluator",
    "dataset_dicts_to_coco",
    "evaluate_coco_json",
    "format_per_category_table",
    "get_backend",
    "instances_to_coco_json",
]
