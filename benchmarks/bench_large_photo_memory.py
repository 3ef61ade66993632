#!/usr/bin/env python3
"""Peak host memory of the output stage on a large photo: :func:`finalize_instances` pasting
``N`` masks at the original resolution, dense (``bool [N, H, W]``) and COCO RLE paths.

Each path runs in a fresh subprocess; the figure is that process's ``ru_maxrss`` after the call
minus before it (inputs already built), i.e. what the call itself added to the peak.

    python benchmarks/bench_large_photo_memory.py [--height 4000 --width 6000 --detections 100]
        [--output benchmarks/results/large_photo_memory_cpu.json] [--baseline before.json]

``--baseline`` embeds an earlier run's results (e.g. made before a change) under ``"baseline"``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any, Dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20


def make_case(n: int, height: int, width: int, seed: int = 0, res: int = 28,
              input_size: int = 1024) -> Dict[str, Any]:
    """``n`` clothing-like detections on a ``height x width`` photo letterboxed to
    ``input_size``: boxes from 3% to 70% of the image side, a quarter of them touching a border,
    in model-input pixels, with ``float [n, res, res]`` mask probabilities."""
    import torch

    g = torch.Generator().manual_seed(seed)
    scale = input_size / max(height, width)
    size = torch.tensor([width, height], dtype=torch.float32)
    wh = (0.03 + 0.67 * torch.rand(n, 2, generator=g) ** 2) * size
    xy = torch.rand(n, 2, generator=g) * (size - wh)
    xy[0::8, 0] = 0  # left border
    xy[1::8, 1] = 0  # top border
    xy[2::8] = size - wh[2::8]  # bottom-right corner
    xy[3::8, 0] = size[0] - wh[3::8, 0] * 0.5  # sticks out on the right
    boxes = torch.cat([xy, xy + wh], 1) * scale
    return {
        "boxes_xyxy": boxes,
        "scores": torch.rand(n, generator=g),
        "classes": torch.randint(0, 46, (n,), generator=g),
        "mask_probs": torch.rand(n, res, res, generator=g),
        "counts": [n], "scales": [scale], "heights": [height], "widths": [width],
    }


def worker(path: str, n: int, height: int, width: int) -> Dict[str, Any]:
    """Run one path in this process; peak memory the call added (MiB) and its time."""
    import torch

    from effdetmask.modeling.postprocess import finalize_instances

    torch.set_num_threads(1)
    case = make_case(n, height, width)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = finalize_instances(**case, return_rle=path == "rle")[0]
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    key = "masks_rle" if path == "rle" else "masks"
    return {"path": path, "peak_added_mib": round((after - before) / 1024, 1),
            "peak_rss_mib": round(after / 1024, 1), "seconds": round(seconds, 2),
            "instances": len(out[key])}


def run_in_subprocess(path: str, n: int, height: int, width: int) -> Dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", path, "--detections", str(n),
           "--height", str(height), "--width", str(width)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--paths", nargs="+", default=["dense", "rle"], choices=["dense", "rle"])
    parser.add_argument("--baseline", help="an earlier run's JSON to embed for comparison")
    parser.add_argument("--worker", choices=["dense", "rle"], help=argparse.SUPPRESS)
    parser.add_argument("--output", default=os.path.join(
        ROOT, "benchmarks", "results", "large_photo_memory_cpu.json"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.detections, args.height, args.width)))
        return
    dense_bytes = args.detections * args.height * args.width
    results = {
        "height": args.height, "width": args.width, "detections": args.detections,
        "dense_masks_mib": round(dense_bytes / MIB, 1),
        "machine": platform.platform(), "python": platform.python_version(),
        "paths": {},
    }
    for path in args.paths:
        r = run_in_subprocess(path, args.detections, args.height, args.width)
        results["paths"][path] = r
        print(f"{path:5s} {args.width}x{args.height} x {args.detections}: peak added "
              f"{r['peak_added_mib']:8.1f} MiB (process peak {r['peak_rss_mib']:.1f} MiB), "
              f"{r['seconds']:.2f} s  [dense masks alone: {results['dense_masks_mib']} MiB]")
    if args.baseline:
        with open(args.baseline) as f:
            results["baseline"] = json.load(f)["paths"]
        for path, r in results["baseline"].items():
            print(f"  baseline {path:5s}: peak added {r['peak_added_mib']:8.1f} MiB, "
                  f"{r['seconds']:.2f} s")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
