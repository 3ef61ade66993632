"""EffDetMask: fused EfficientDet + Mask R-CNN instance segmentation for Fashionpedia apparel.

The model API lives in :mod:`effdetmask.modeling` (``build_model``, ``load_weights``); the config in
:mod:`effdetmask.config`. Importing this package is kept light (no torch model code).
"""

import warnings

# effdet 0.4.1 calls torch.jit.script at import time, which torch >= 2.9 deprecates with a
# FutureWarning per call. This is the one place that silences it, before effdet is imported
# anywhere.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)

from .config import get_cfg, setup_cfg  # noqa: E402

__all__ = ["get_cfg", "setup_cfg"]
