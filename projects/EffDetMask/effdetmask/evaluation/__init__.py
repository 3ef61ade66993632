"""COCO box/mask evaluation (the evaluator used by training and ``--eval-only``, and AP on files),
and Fashionpedia's AP with IoU and attribute F1 on files."""

from .attribute_f1 import attribute_group_f1, format_attribute_group_table
from .backends import BACKENDS, evaluate_coco_json, format_per_category_table, get_backend
from .coco_evaluator import COCOEvaluator, dataset_dicts_to_coco, instances_to_coco_json
from .fashionpedia_eval import evaluate_fashionpedia_json, format_fashionpedia_summary

__all__ = [
    "BACKENDS",
    "COCOEvaluator",
    "attribute_group_f1",
    "dataset_dicts_to_coco",
    "evaluate_coco_json",
    "evaluate_fashionpedia_json",
    "format_attribute_group_table",
    "format_fashionpedia_summary",
    "format_per_category_table",
    "get_backend",
    "instances_to_coco_json",
]
