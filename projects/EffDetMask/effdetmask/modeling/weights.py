"""Loading weights into a built model: our own checkpoints and effdet COCO checkpoints.

Files are ``.safetensors`` or ``torch.save`` files read with ``weights_only=True``: a file that
pickles anything but tensors and plain containers is refused, never unpickled. Every error names
the file and the problem (empty, truncated, unsafe) or the offending keys. Keys that only exist on
one side because of frozen BatchNorm (``num_batches_tracked``) are not errors.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Set

import safetensors
import safetensors.torch
import torch
import torch.nn as nn

from .effdet_utils import init_effdet_weights, set_prior_bias

__all__ = [
    "load_weights",
    "load_checkpoint",
    "load_effdet_checkpoint",
    "read_state_dict",
    "load_torch_file",
    "save_state_dict",
    "read_weights_metadata",
    "upgrade_legacy_keys",
    "CheckpointError",
    "UnsafeCheckpointError",
    "SAFETENSORS_SUFFIX",
]

logger = logging.getLogger(__name__)

# effdet's EfficientDet module names -> ours; class_net is dropped (reset to our classes)
_EFFDET_PREFIXES = {
    "backbone.": "backbone.body.",
    "fpn.": "backbone.fpn.",
    "box_net.": "proposal_generator.box_net.",
}
_IGNORED_SUFFIX = "num_batches_tracked"
# state-dict prefixes of checkpoints saved before a part moved -> where the part is now
_LEGACY_PREFIXES = {"mask_head.": "roi_heads.mask_head."}  # the RoI-heads module took the head
SAFETENSORS_SUFFIX = ".safetensors"


class CheckpointError(RuntimeError):
    """A weights or checkpoint file that cannot be read: empty, truncated or corrupt."""


class UnsafeCheckpointError(CheckpointError):
    """A file that pickles Python objects besides tensors and plain containers; never unpickled,
    since unpickling such a file can run any code it names."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def load_torch_file(path: str, *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, with errors that name the file.

    Only tensors, plain containers and numbers are unpickled (what state dicts and this project's
    Lightning checkpoints hold); a file pickling anything else is refused without running any of
    it. ``mmap`` maps tensor storages instead of reading them (a cheap validation of a large
    zip-format checkpoint).

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file pickles other Python objects.
        CheckpointError: the file is empty, truncated, corrupt or not a PyTorch file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint: a save that was "
                              "interrupted leaves such a file")
    mmap = mmap and zipfile.is_zipfile(path)  # legacy (non-zip) files cannot be mapped
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        message = str(e)
        if "Weights only load failed" not in message:
            raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint: "
                                  f"{_first_line(e)}") from e
        # torch's wording varies with the pickle (blocked module, unsupported global or opcode)
        found = re.search(r"GLOBAL ([\w.]+)", message)
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", message)
        if found:
            detail = f" (it names {found.group(1)})"
        else:
            detail = f" ({detail.group(1).strip()})" if detail else ""
        # ``from None``: torch's message suggests weights_only=False, which would run the file
        raise UnsafeCheckpointError(
            f"refusing to load {path}: torch.load(weights_only=True) rejects it{detail}. It "
            "pickles Python objects other than tensors and plain containers, which could run "
            "arbitrary code when unpickled, or it is corrupt; nothing in it was run. If you trust "
            "the file, re-save its state dict as .safetensors (or torch.save a plain state dict)"
        ) from None
    except Exception as e:  # noqa: BLE001  (torch raises RuntimeError, EOFError, KeyError, ...)
        raise CheckpointError(f"{path} is truncated, corrupt or not a PyTorch checkpoint "
                              f"({type(e).__name__}: {_first_line(e)})") from e


def _read_safetensors(path: str, read: Callable[[str], Any]) -> Any:
    """``read(path)`` of a ``.safetensors`` file, with errors that name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a safetensors file: a save that "
                              "was interrupted leaves such a file")
    try:
        return read(path)
    except Exception as e:  # noqa: BLE001  (SafetensorError, OSError, ...)
        raise CheckpointError(f"{path} is truncated, corrupt or not a safetensors file "
                              f"({type(e).__name__}: {_first_line(e)})") from e


def _header_metadata(path: str) -> Dict[str, str]:
    with safetensors.safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


def save_state_dict(state: Mapping[str, torch.Tensor], path: str,
                    metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write a state dict as ``.safetensors`` (tensors only; nothing to unpickle when read), with
    ``metadata`` (str -> str, e.g. the class names the model predicts) in the file's header;
    :func:`read_weights_metadata` reads it back."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    # safetensors refuses tensors that share storage (tied weights): each gets its own copy
    storages = set()
    for key, value in tensors.items():
        storage = value.untyped_storage().data_ptr()
        if value.numel() and storage in storages:
            tensors[key] = value.clone()
        storages.add(storage)
    safetensors.torch.save_file(tensors, path, metadata={**(metadata or {}), "format": "pt"})


def read_weights_metadata(path: str) -> Dict[str, str]:
    """The str -> str metadata :func:`save_state_dict` recorded in a ``.safetensors`` file's
    header (the tensors are not read); ``{}`` for other files and files without any."""
    if not path.endswith(SAFETENSORS_SUFFIX):
        return {}
    meta = _read_safetensors(path, _header_metadata)
    return {k: v for k, v in meta.items() if k != "format"}


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """State dict from a file: ``.safetensors``, or a ``torch.save`` file holding a plain state
    dict, a Lightning checkpoint (``state_dict`` with keys prefixed ``model.``) or a
    ``{"model": state_dict}`` checkpoint.

    ``torch.save`` files are read with ``weights_only=True``: one that pickles other Python
    objects is refused (:class:`UnsafeCheckpointError`), never unpickled.
    """
    if path.endswith(SAFETENSORS_SUFFIX):
        return _read_safetensors(path, lambda p: safetensors.torch.load_file(p, device="cpu"))
    obj = load_torch_file(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict or checkpoint, got {type(obj).__name__}")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
        if any(k.startswith("model.") for k in obj):
            obj = {k[len("model."):]: v for k, v in obj.items() if k.startswith("model.")}
    elif "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def upgrade_legacy_keys(state: Mapping[str, Any], own_keys: Set[str],
                        prefix: str = "") -> Dict[str, Any]:
    """``state`` with keys of a checkpoint saved before a part moved renamed to where the part is
    now (``prefix`` + an old prefix of ``_LEGACY_PREFIXES``), when ``own_keys`` (the model's) has
    the new name and not the old one; other keys unchanged."""
    out = {}
    for k, v in state.items():
        for old, new in _LEGACY_PREFIXES.items():
            old, new = prefix + old, prefix + new
            if k.startswith(old) and k not in own_keys:
                moved = new + k[len(old):]
                if moved in own_keys:
                    k = moved
                    break
        out[k] = v
    return out


def _check_and_load(model: nn.Module, state: Dict[str, torch.Tensor], path: str,
                    expected: List[str], allow_unexpected: bool = False) -> List[str]:
    """Load ``state`` into ``model`` after checking keys and shapes; returns the keys assigned."""
    own = model.state_dict()
    state = upgrade_legacy_keys(state, set(own))
    missing = [k for k in expected if k not in state and not k.endswith(_IGNORED_SUFFIX)]
    unexpected = [k for k in state if k not in own and not k.endswith(_IGNORED_SUFFIX)]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in state if k in own and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {missing[:5]})")
    if unexpected and not allow_unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {unexpected[:5]})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (first: {shapes[:5]})")
    if problems:
        name = type(model).__name__
        raise RuntimeError(f"cannot load {path} into {name}: " + "; ".join(problems))
    assigned = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(assigned, strict=False)
    return list(assigned)


def load_checkpoint(model: nn.Module, path: str) -> List[str]:
    """Load one of our checkpoints (MODEL.WEIGHTS) strictly (up to ``num_batches_tracked``);
    returns the state-dict keys assigned."""
    state = read_state_dict(path)
    keys = _check_and_load(model, state, path, expected=list(model.state_dict()))
    logger.info("loaded %d tensors from %s", len(state), path)
    return keys


def _fold_redundant_biases(state: Dict[str, torch.Tensor], own: Mapping[str, torch.Tensor],
                           path: str) -> Dict[str, torch.Tensor]:
    """Fold the conv biases of effdet's TF-ported checkpoints into the BatchNorm after each conv.

    ``tf_efficientdet_*`` models keep a bias on every conv that a BatchNorm follows
    (``redundant_bias``); ours have none. ``BN(conv(x) + b)`` equals ``BN'(conv(x))`` with
    ``running_mean' = running_mean - b``, so the bias moves into the statistics exactly. The BN is
    ``<conv's parent>.bn`` in BiFPN blocks, and ``bn_rep.<repeat>.<level>.bn`` (one per level) for
    ``<head>.conv_rep.<repeat>`` convs.
    """
    out = dict(state)
    for key in [k for k in state if k.endswith(".bias") and k not in own]:
        parent = key.rsplit(".", 2)[0]  # "<...>.conv.conv_pw.bias" -> "<...>.conv"
        head, _, repeat = parent.rpartition(".conv_rep.")
        if head:
            bn_means = [k for k in state if k.startswith(f"{head}.bn_rep.{repeat}.")
                        and k.endswith(".running_mean")]
        else:
            bn_means = [f"{parent}.bn.running_mean"]
        if not bn_means or any(k not in state for k in bn_means):
            raise RuntimeError(f"cannot load {path}: {key!r} is a conv bias with no BatchNorm "
                               "after it to fold it into")
        bias = out.pop(key)
        for mean_key in bn_means:
            out[mean_key] = state[mean_key] - bias
    return out


def load_effdet_checkpoint(model: nn.Module, path: str, prior_prob: float = 0.01) -> List[str]:
    """Load an effdet ``EfficientDet`` state dict (e.g. COCO d0) into an EffDetMask model.

    Both checkpoint families load: ``efficientdet_*`` (PyTorch-native) and ``tf_efficientdet_*``
    (TF-ported; their redundant conv biases are folded into the following BatchNorm, exact). For
    the TF family pick the matching backbone (``MODEL.BACKBONE.TIMM_NAME tf_efficientnet_b0``):
    its TF "same" padding is part of the backbone, not of the weights. The backbone, BiFPN and box
    head are kept; the class head is re-initialised for our classes with the focal prior bias (as
    effdet's ``reset_head`` does); the mask head keeps its init. Returns the keys assigned.
    """
    raw = read_state_dict(path)
    state = {}
    for key, value in raw.items():
        for src, dst in _EFFDET_PREFIXES.items():
            if key.startswith(src):
                state[dst + key[len(src):]] = value
                break
        else:
            if not key.startswith("class_net."):
                raise RuntimeError(f"cannot load {path}: {key!r} is not an effdet EfficientDet key")
    own = model.state_dict()
    state = _fold_redundant_biases(state, own, path)
    expected = [k for k in own if k.startswith(tuple(_EFFDET_PREFIXES.values()))]
    keys = _check_and_load(model, state, path, expected=expected)
    class_net = model.proposal_generator.class_net
    init_effdet_weights(class_net, "class_net")
    set_prior_bias(class_net, prior_prob)
    logger.info("loaded effdet backbone, BiFPN and box head from %s; class head reset", path)
    return keys


def load_weights(model: nn.Module, cfg) -> Set[str]:
    """Apply MODEL.EFFDET_HEAD.EFFDET_CHECKPOINT, then MODEL.WEIGHTS.

    The effdet checkpoint goes through the model's own ``load_effdet_checkpoint(path,
    prior_prob)`` (:class:`~effdetmask.modeling.meta_arch.EffDetMask` has one); a model without that
    method (the Mask R-CNN baseline) has no effdet parts and ignores the key with a warning.
    Returns the state-dict keys the files assigned (what :func:`freeze_loaded_batch_norms` may
    freeze)."""
    loaded: Set[str] = set()
    effdet_ckpt = cfg.MODEL.EFFDET_HEAD.EFFDET_CHECKPOINT
    if effdet_ckpt:
        load_effdet = getattr(model, "load_effdet_checkpoint", None)
        if load_effdet is None:
            logger.warning("%s has no effdet parts: MODEL.EFFDET_HEAD.EFFDET_CHECKPOINT %s is "
                           "ignored", type(model).__name__, effdet_ckpt)
        else:
            loaded.update(load_effdet(effdet_ckpt, prior_prob=cfg.MODEL.EFFDET_HEAD.PRIOR_PROB))
    if cfg.MODEL.WEIGHTS:
        loaded.update(load_checkpoint(model, cfg.MODEL.WEIGHTS))
    return loaded
