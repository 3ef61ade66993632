"""Static int8 quantization (onnxruntime QDQ) of an exported EffDetMask graph.

What is quantized (the defaults of :func:`quantize_onnx_int8`): every ``Conv`` node (the
EfficientNet backbone with its squeeze-excitation convs, the BiFPN, the class/box towers, the mask
head's 3x3 convs) except the class and box prediction convs (:data:`HEAD_PREDICT_CONVS`), with
per-channel symmetric int8 weights and asymmetric uint8 activations calibrated by min/max over real,
letterboxed images. A ``QuantizeLinear -> DequantizeLinear`` pair sits on each input of those convs;
onnxruntime fuses them into ``QLinearConv`` at session creation.

What stays float: everything that is not a listed op type, i.e. the input normalisation, the swish
``Mul``/``Sigmoid`` activations, BiFPN's weighted fusion, resizes and pooling, the anchor box
decode, ``TopK``, ``NonMaxSuppression``, ``Gather``, ``RoiAlign``, the mask head's deconvolution
(``ConvTranspose``) and its class-specific predictor (an ``Einsum``), the last (pointwise) conv of
the class and box heads, and every output. So the post-processing is exact float arithmetic on
(slightly perturbed) head outputs. ``RoiAlign`` pools the int8-rounded BiFPN features (the tensor
the heads' first convs read), with float boxes.

Known pitfall: a conv whose int32 bias would overflow (scale = activation scale x weight scale, e.g.
the class prediction conv, bias -4.6 from the prior, with tiny weights) gets its weight scale raised
by onnxruntime, which can round the weights to zero (all scores = the prior). Kept float by
default, the prediction convs cost no measurable time
(benchmarks/results/cpu_onnxruntime_settings.json: d0 908 vs 974 ms, d0_fast 567 vs 649 ms with them
quantized), so ``exclude=()`` is only worth trying on a trained model.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["calibration_images", "quantize_onnx_int8", "int8_path_for", "HEAD_PREDICT_CONVS",
           "renormalize_batch_norm", "condition_random_model"]

logger = logging.getLogger(__name__)

# Node-name patterns (regular expressions, searched) of the class and box prediction convs, the
# last conv of each EffDet head: pass as ``exclude`` to keep them float.
HEAD_PREDICT_CONVS = (r"^/class_net/predict/conv_pw", r"^/box_net/predict/conv_pw")


def int8_path_for(fp32_path: str) -> str:
    """``dir/model.onnx`` -> ``dir/model.int8.onnx``: where the tools put the int8 graph."""
    stem, ext = os.path.splitext(fp32_path)
    return f"{stem}.int8{ext or '.onnx'}"


def calibration_images(cfg: Any, dataset_name: str, num_images: int,
                       seed: int = 0) -> List[np.ndarray]:
    """Model inputs made from ``num_images`` images of a registered dataset, as at test time.

    Images pass through the test-time :class:`~effdetmask.data.mapper.DatasetMapper` (letterbox to
    ``S = cfg.INPUT.SIZE``, top-left placement, zero padding), the same path as
    ``build_test_loader``. The images are a seeded sample without replacement, returned in
    dataset order (all of them when the dataset has at most ``num_images``). Built-in datasets
    follow ``cfg``'s DATASETS.ROOT and DATASETS.SYNTH (a generated split is made on first use).

    Args:
        cfg: the model's config (INPUT.SIZE, DATASETS.*).
        dataset_name: a registered dataset (``DatasetCatalog``).
        num_images: how many images to take (>= 1).
        seed: seed of the sample.
    Returns:
        ``min(num_images, len(dataset))`` arrays, each ``uint8 [1, 3, S, S]`` RGB.
    Raises:
        ValueError: ``dataset_name`` is not registered (the message lists the registered names),
            or ``num_images < 1``.
    """
    from ..data import DatasetCatalog, register_all_from_cfg
    from ..data.mapper import DatasetMapper

    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    register_all_from_cfg(cfg)
    if dataset_name not in DatasetCatalog:
        raise ValueError(f"calibration dataset {dataset_name!r} is not registered; registered: "
                         f"{', '.join(DatasetCatalog.list()) or 'none'}")
    dicts = DatasetCatalog.get(dataset_name)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(len(dicts), size=min(num_images, len(dicts)), replace=False))
    mapper = DatasetMapper.from_config(cfg, is_train=False)
    out = []
    for i in take:
        # annotations are not needed: skip their rasterisation
        item = {k: v for k, v in dicts[int(i)].items() if k != "annotations"}
        out.append(mapper(item)["image"].numpy()[None])
    logger.info("calibration: %d images of %s at %d px", len(out), dataset_name, cfg.INPUT.SIZE)
    return out


@torch.no_grad()
def renormalize_batch_norm(model: torch.nn.Module, images: Sequence[np.ndarray]) -> torch.nn.Module:
    """Give an untrained (random-init) ``EffDetMask`` realistic activations: set every BatchNorm's
    running statistics to the batch statistics of ``images`` through the backbone, BiFPN and the
    EffDet heads; the model is returned in eval mode.

    Random init leaves features that shrink by orders of magnitude per stage (std ~1e-5 at P7),
    where int8 error says nothing; after this each normalised activation has unit variance, as in
    a trained model. For measuring quantization error and speed only; the mask head has no
    BatchNorm. ``images``: ``uint8 [B, 3, S, S]`` arrays (:func:`calibration_images`).
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("the model has no BatchNorm left (built with inference_only=True?)")
    x = torch.from_numpy(np.concatenate(list(images))).float()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the one batch
        m.train()
    model.dense_forward((x - model.pixel_mean) / model.pixel_std)
    return model.eval()


@torch.no_grad()
def condition_random_model(model: torch.nn.Module, images: Sequence[np.ndarray], *,
                           class_logits: Tuple[float, float] = (-2.0, 0.4),
                           box_deltas: Tuple[float, float] = (0.0, 0.2)) -> torch.nn.Module:
    """:func:`renormalize_batch_norm`, then set the class and box prediction convs so that, on
    ``images[0]``, class logits and box deltas have the given ``(mean, std)`` per output channel
    mean and overall std: scores neither tied nor saturated, boxes near their anchors (so a fixed
    detection count survives selection), as in a trained model. Returns ``model`` in eval mode."""
    renormalize_batch_norm(model, images)
    x = (torch.from_numpy(images[0]).float() - model.pixel_mean) / model.pixel_std
    _, cls, box = model.dense_forward(x)
    for head, out, (mean, std) in (("class_net", cls, class_logits), ("box_net", box, box_deltas)):
        conv = model.proposal_generator.get_submodule(f"{head}.predict.conv_pw")
        out = torch.cat([o.transpose(0, 1).flatten(1) for o in out], 1)  # [channels, positions]
        scale = std / out.std()
        conv.weight.mul_(scale)
        conv.bias.copy_(mean + scale * (conv.bias - out.mean(1)))
    return model.eval()


class _ArrayReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over a list of ``images`` arrays."""

    def __init__(self, arrays: Sequence[np.ndarray], input_name: str) -> None:
        self.arrays = list(arrays)
        self.input_name = input_name
        self._next = 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self._next >= len(self.arrays):
            return None
        self._next += 1
        return {self.input_name: self.arrays[self._next - 1]}

    def rewind(self) -> None:
        self._next = 0


def _preprocess(fp32_path: str, out_path: str) -> str:
    """``quant_pre_process`` (onnx optimisation, shape inference) into ``out_path``; falls back to
    the plain graph when it fails (symbolic shape inference does not know every op)."""
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(fp32_path, out_path, skip_symbolic_shape=False)
        return out_path
    except Exception as e:  # pre-processing only helps; quantizing the raw graph also works
        logger.warning("quant_pre_process failed (%s: %s); quantizing the graph as exported",
                       type(e).__name__, e)
        return fp32_path


def _excluded_nodes(model_path: str, op_types: Sequence[str], patterns: Sequence[str]
                    ) -> List[str]:
    import onnx

    if not patterns:
        return []
    regexes = [re.compile(p) for p in patterns]
    graph = onnx.load(model_path, load_external_data=False).graph
    return [n.name for n in graph.node
            if n.op_type in op_types and any(r.search(n.name) for r in regexes)]


def quantize_onnx_int8(
    fp32_path: str,
    int8_path: str,
    calibration: Sequence[np.ndarray],
    *,
    per_channel: bool = True,
    op_types: Sequence[str] = ("Conv",),
    activation_type: str = "QUInt8",
    exclude: Sequence[str] = HEAD_PREDICT_CONVS,
    preprocess: bool = True,
    calibrate_method: str = "MinMax",
) -> str:
    """Write a static int8 QDQ copy of the fp32 graph at ``fp32_path`` to ``int8_path``.

    Weights: ``QInt8`` symmetric (per output channel when ``per_channel``); activations:
    ``activation_type`` (``"QUInt8"``, asymmetric: the u8s8 kernels VNNI runs; or ``"QInt8"``),
    ranges by min/max calibration on ``calibration``. Only nodes of ``op_types`` are quantized;
    everything else, the post-processing included, stays float (module docstring).

    Args:
        fp32_path: an :func:`~effdetmask.export.onnx.export_onnx` graph.
        int8_path: output path.
        calibration: model inputs, each ``uint8 [B, 3, S, S]`` (:func:`calibration_images`);
            at least one.
        per_channel: per-output-channel weight scales (else one per tensor).
        op_types: ONNX op types to quantize.
        activation_type: ``"QUInt8"`` or ``"QInt8"``.
        exclude: regular expressions searched in node names; matching nodes of ``op_types`` stay
            float (default :data:`HEAD_PREDICT_CONVS`; ``()`` quantizes every conv).
        preprocess: run ``quant_pre_process`` first (falls back to the raw graph on failure).
        calibrate_method: ``"MinMax"``, ``"Percentile"`` (99.999th) or ``"Entropy"``, the
            ``onnxruntime.quantization.CalibrationMethod`` that sets activation ranges.
    Returns:
        ``int8_path``.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not len(calibration):
        raise ValueError("quantize_onnx_int8 needs at least one calibration array")
    if activation_type not in ("QUInt8", "QInt8"):
        raise ValueError(f"activation_type must be 'QUInt8' or 'QInt8', got {activation_type!r}")
    with tempfile.TemporaryDirectory() as tmp:
        source = _preprocess(fp32_path, os.path.join(tmp, "pre.onnx")) if preprocess \
            else fp32_path
        excluded = _excluded_nodes(source, op_types, exclude)
        quantize_static(
            source, int8_path, _ArrayReader(calibration, "images"),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types),
            per_channel=per_channel, weight_type=QuantType.QInt8,
            activation_type=getattr(QuantType, activation_type),
            nodes_to_exclude=excluded,
            calibrate_method=getattr(CalibrationMethod, calibrate_method),
            extra_options={"ActivationSymmetric": activation_type == "QInt8"},
        )
    logger.info("int8 graph %s: %s %s, %d calibration inputs, %d excluded nodes", int8_path,
                "/".join(op_types), activation_type, len(calibration), len(excluded))
    return int8_path
