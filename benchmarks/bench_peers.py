#!/usr/bin/env python3
"""Peer row: EffDetMask's user-facing predictor next to Ultralytics YOLO11n-seg, timed interleaved.

Both sides run their whole user-facing path on the same decoded photo (decoding is not timed), at
the same input size ``--size``, batch 1, ``--threads`` torch threads, in one interleaved run
(``effdetmask.utils.timing.time_callables``, median over repeats):

- EffDetMask: ``BatchPredictor`` built by ``from_config`` (the demo's path): letterbox to
  ``S x S``, inference, dense masks pasted at image resolution. Forced to ``--detections N``
  instances as ``bench_inference.py`` does (``TEST.SCORE_THRESH 0``, ``TEST.DETECTIONS_PER_IMAGE
  = MODEL.EFFDET_HEAD.MAX_DETECTIONS = N``); random init unless ``--weights``.
- YOLO11n-seg: ``model.predict(image, imgsz=S, conf=0, max_det=N, retina_masks=True,
  device="cpu")``: letterbox (long side S, ``rect`` padding to a multiple of 32), inference, NMS,
  masks at image resolution. The photo is given as BGR, Ultralytics' convention for arrays.

Detection counts are what each side returned. YOLO keeps at most ``max_det`` boxes after NMS and
then drops masks without a positive pixel, so it can return fewer than N; every EffDetMask model is
then timed again at YOLO's count (row ``<model>@<count>``), in the same interleaved run. Without
weights (``yolo11n-seg.yaml``: the architecture, hence the compute, of ``yolo11n-seg.pt``) how
many masks are empty depends on the random init, from none to all; the bench draws up to
``--yolo-init-draws`` inits (seeds ``--seed``, ``--seed`` + 1, ...) and keeps the one returning
most detections, as a trained model returns at ``conf=0`` (the draws are in the JSON).

Threads: Ultralytics sets ``torch.set_num_threads(min(8, cpu_count - 1))`` when it sets up its
predictor (first ``predict``) and ``cv2.setNumThreads(0)`` on import (process-wide, so for both
sides). Every timed call therefore starts with ``torch.set_num_threads(--threads)``; the thread
count seen inside each model's forward is recorded (``threads_in_forward``).

Ultralytics is AGPL-3.0 and never a dependency of this project: install it in a separate
environment (see ``INSTALL_HINT``); without it the script exits with status 2.

    python benchmarks/bench_peers.py --models d0_fast lite0 \\
        --output benchmarks/results/cpu_peers_yolo11n_seg.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from effdetmask.config import RANDOM_INIT_OPTS, setup_cfg
from effdetmask.data.image_io import read_image_rgb
from effdetmask.predictor import BatchPredictor
from effdetmask.utils.table import format_table
from effdetmask.utils.timing import time_callables

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_inference import CONFIGS, ROOT  # noqa: E402

logger = logging.getLogger("bench_peers")

YOLO = "yolo11n-seg"
NO_ULTRALYTICS_EXIT = 2
INSTALL_HINT = (
    "ultralytics is not installed. It is AGPL-3.0 and must never become a dependency of this "
    "project: install it into a separate environment that reuses this torch, e.g.\n"
    "    python3 -m venv --system-site-packages /work/venv-peers\n"
    "    /work/venv-peers/bin/pip install ultralytics   # check it keeps the system torch\n"
    "and run this script with /work/venv-peers/bin/python."
)


def load_image(path: str = "") -> np.ndarray:
    """The photo as RGB ``np.uint8 [H, W, 3]``: ``path`` (EXIF orientation applied, as the
    predictor reads files), or scikit-image's ``astronaut`` (512 x 512) when empty."""
    if path:
        return read_image_rgb(path)
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def effdetmask_opts(size: int, detections: int, weights: str = "",
                    opts: Sequence[str] = ()) -> List[str]:
    """Config overrides: input ``size``, batch 1, CPU, exactly ``detections`` instances."""
    n = str(detections)
    out = ["INPUT.SIZE", str(size), "MODEL.DEVICE", "cpu", "TEST.IMS_PER_BATCH", "1",
           "TEST.SCORE_THRESH", "0.0", "TEST.DETECTIONS_PER_IMAGE", n,
           "MODEL.EFFDET_HEAD.MAX_DETECTIONS", n]
    out += ["MODEL.WEIGHTS", weights] if weights else list(RANDOM_INIT_OPTS)
    return out + list(opts)


def build_effdetmask(name: str, *, size: int, detections: int, weights: str = "",
                     opts: Sequence[str] = ()) -> BatchPredictor:
    """The user-facing predictor of ``configs/`` model ``name`` (dense masks, image resolution)."""
    cfg = setup_cfg(os.path.join(ROOT, CONFIGS[name]),
                    effdetmask_opts(size, detections, weights, opts))
    return BatchPredictor.from_config(cfg, return_rle=False)


def import_ultralytics() -> Any:
    """``ultralytics``, or ``SystemExit(2)`` after logging how to install it (separately)."""
    try:
        import ultralytics
    except ImportError:
        logger.error(INSTALL_HINT)
        raise SystemExit(NO_ULTRALYTICS_EXIT) from None
    return ultralytics


def default_yolo_weights() -> str:
    """``yolo11n-seg.pt`` where it exists locally (nothing is downloaded), else the yaml."""
    return f"{YOLO}.pt" if os.path.exists(f"{YOLO}.pt") else f"{YOLO}.yaml"


class ForwardProbe:
    """Records, at each forward of ``module``, the torch thread count and the input's shape."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.threads: List[int] = []
        self.input_shape: List[int] = []
        module.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: Tuple[Any, ...]) -> None:
        self.threads.append(torch.get_num_threads())
        x = args[0]
        if isinstance(x, list):  # EffDetMask: mapper outputs
            x = x[0]["image"]
        self.input_shape = list(x.shape)


def yolo_predict(model: Any, image_bgr: np.ndarray, size: int, detections: int) -> List[Any]:
    return model.predict(image_bgr, imgsz=size, conf=0.0, max_det=detections,
                         retina_masks=True, device="cpu", verbose=False)


def yolo_count(results: List[Any]) -> Tuple[int, List[int]]:
    masks = results[0].masks
    return len(results[0].boxes), list(masks.data.shape[1:]) if masks is not None else []


def effdetmask_count(instances: List[Dict[str, Any]]) -> Tuple[int, List[int]]:
    return len(instances[0]["scores"]), list(instances[0]["masks"].shape[1:])


def build_yolo(weights: str, image_bgr: np.ndarray, *, size: int, detections: int, seed: int,
               draws: int) -> Tuple[Any, Dict[str, Any]]:
    """A YOLO model ready to predict, and a description of it for the JSON.

    Random init (a ``.yaml``): up to ``draws`` inits from ``seed`` on, keeping the first that
    returns ``detections`` instances, else the one returning most.
    """
    from ultralytics import YOLO as UltralyticsYOLO

    if not weights.endswith(".yaml"):
        return UltralyticsYOLO(weights, verbose=False), {"weights": weights}
    tried: Dict[int, int] = {}
    best = None
    for s in range(seed, seed + max(1, draws)):
        torch.manual_seed(s)
        model = UltralyticsYOLO(weights, verbose=False)
        tried[s] = yolo_count(yolo_predict(model, image_bgr, size, detections))[0]
        if best is None or tried[s] > tried[best[0]]:
            best = (s, model)
        if tried[s] >= detections:
            break
    info = {"weights": f"{weights} (random init)",
            "weights_note": f"random init (seed {best[0]}): no {YOLO}.pt here and no download "
                            f"offline; the yaml is the architecture, hence the compute, of "
                            f"{YOLO}.pt", "init_seed": best[0], "detections_per_init_seed": tried}
    return best[1], info


def measure(fn: Callable[[], Any], count: Callable[[Any], Tuple[int, List[int]]]
            ) -> Tuple[int, List[int]]:
    with torch.inference_mode():
        return count(fn())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ultralytics = import_ultralytics()  # first: without it there is nothing to compare with
    torch.set_num_threads(args.threads)
    rgb = load_image(args.image)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    n, size, threads = args.detections, args.size, args.threads

    yolo_model, yolo_info = build_yolo(args.yolo_weights, bgr, size=size, detections=n,
                                       seed=args.seed, draws=args.yolo_init_draws)
    runs: Dict[str, Dict[str, Any]] = {}

    def add_yolo(name: str, k: int) -> None:
        def fn() -> Any:
            torch.set_num_threads(threads)  # Ultralytics resets it at predictor setup
            return yolo_predict(yolo_model, bgr, size, k)

        runs[name] = {"fn": fn, "count": yolo_count, "side": YOLO, "requested": k,
                      "probe": yolo_model.predictor.model, **yolo_info}  # a fused copy

    def add_effdetmask(name: str, model: str, k: int) -> None:
        torch.manual_seed(args.seed)
        predictor = build_effdetmask(model, size=size, detections=k, weights=args.weights,
                                     opts=args.opts)

        def fn() -> Any:
            torch.set_num_threads(threads)
            return predictor([rgb])

        runs[name] = {"fn": fn, "count": effdetmask_count, "side": "EffDetMask", "requested": k,
                      "weights": args.weights or "random init", "probe": predictor.model,
                      "opts": effdetmask_opts(size, k, args.weights, args.opts)}

    add_yolo(YOLO, n)
    for model in args.models:
        add_effdetmask(model, model, n)
    counts = {name: measure(r["fn"], r["count"]) for name, r in runs.items()}
    # equal counts: YOLO may return fewer than N (NMS, empty masks); an EffDetMask model that
    # returns fewer than YOLO (never seen at N = 100) gets YOLO re-timed at its count instead
    yolo_n = counts[YOLO][0]
    for model in args.models:
        k = counts[model][0]
        if 0 < yolo_n < k:
            add_effdetmask(f"{model}@{yolo_n}", model, yolo_n)
        elif 0 < k < yolo_n and f"{YOLO}@{k}" not in runs:
            add_yolo(f"{YOLO}@{k}", k)
    if yolo_n == 0:
        logger.warning("%s returned no detection: no row at equal counts", YOLO)
    for name, r in runs.items():
        if name not in counts:
            counts[name] = measure(r["fn"], r["count"])
    # the YOLO runs hook one module: their probes see each other's calls (same input, threads)
    probes = {name: ForwardProbe(r["probe"]) for name, r in runs.items()}

    load_before = os.getloadavg()
    timing = time_callables({name: r["fn"] for name, r in runs.items()},
                            images_per_call={name: 1 for name in runs},
                            devices={name: torch.device("cpu") for name in runs},
                            warmup=args.warmup, repeats=args.repeats)
    rows = []
    for name, r in runs.items():
        k, mask_hw = counts[name]
        peer = f"{YOLO}@{k}" if f"{YOLO}@{k}" in runs else YOLO
        ms = 1e3 * timing[name]["s_per_img"]
        rows.append({
            "model": name, "side": r["side"], "weights": r["weights"],
            "detections_requested": r["requested"], "detections_per_img": k,
            "ms_per_img": ms, "min_ms_per_img": 1e3 * timing[name]["min_s_per_img"],
            "img_per_s": timing[name]["img_per_s"], "vs": peer,
            "ms_ratio_vs_yolo": ms / (1e3 * timing[peer]["s_per_img"]),
            "mask_hw": mask_hw, "model_input": probes[name].input_shape,
            "threads_in_forward": sorted(set(probes[name].threads)),
            "repeats": timing[name]["repeats"],
            **{key: r[key] for key in ("weights_note", "opts", "init_seed",
                                       "detections_per_init_seed")
               if key in r},
        })
    print_table(rows)
    if args.output:
        # a shared machine: its load during the run says how far to trust the figures
        load = {"before": load_before, "after": os.getloadavg()}
        write_json(args, rows, rgb, ultralytics.__version__, load)
    return 0


def machine(threads: int) -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": threads,
            "platform": platform.platform(), "python": platform.python_version()}


def write_json(args: argparse.Namespace, rows: List[Dict[str, Any]], rgb: np.ndarray,
               ultralytics_version: str, load_average: Dict[str, Any]) -> None:
    import cv2

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({
            "command": shlex.join(["python", *sys.argv]),
            "torch": torch.__version__, "ultralytics": ultralytics_version,
            "opencv": cv2.__version__, "numpy": np.__version__, "machine": machine(args.threads),
            "load_average_1_5_15min": load_average,
            "image": args.image or "skimage.data.astronaut()", "image_hw": list(rgb.shape[:2]),
            "input_size": args.size, "batch_size": 1, "warmup": args.warmup,
            "threads_note": "torch.set_num_threads(--threads) at the start of every timed call "
                            "of both predictors (Ultralytics resets it at predictor setup)",
            "rows": rows,
        }, f, indent=2)


def print_table(rows: List[Dict[str, Any]]) -> None:
    cols = ["model", "weights", "detections_per_img", "ms_per_img", "min_ms_per_img",
            "ms_ratio_vs_yolo", "vs",
            "mask_hw", "model_input", "threads_in_forward"]

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "x".join(map(str, v)) if isinstance(v, list) else str(v)

    print(format_table(rows, cols, fmt))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["d0_fast"],
                   choices=sorted(k for k in CONFIGS if k != "baseline"))
    p.add_argument("--image", default="", help="photo (default: skimage.data.astronaut())")
    p.add_argument("--size", type=int, default=512, help="input size S of both")
    p.add_argument("--detections", type=int, default=100, help="N: forced / max_det per image")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--weights", default="", help="EffDetMask MODEL.WEIGHTS (default: random)")
    p.add_argument("--yolo-weights", default=default_yolo_weights(),
                   help=f"{YOLO}.pt if it exists here, else {YOLO}.yaml (random init)")
    p.add_argument("--yolo-init-draws", type=int, default=5,
                   help="random-init YOLO: inits tried for non-empty masks (see the docstring)")
    p.add_argument("--seed", type=int, default=0, help="random-init seed of both")
    p.add_argument("--output", default="", help="JSON file for the rows")
    p.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides for EffDetMask")
    args = p.parse_args(argv)
    if args.detections < 1:
        p.error("--detections must be >= 1")
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
