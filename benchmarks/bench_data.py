#!/usr/bin/env python3
"""Data pipeline figures: cache bytes/image, cache build images/s, mapped samples/s per worker
(one process) from the HDF5 cache vs from JPEG+JSON.

    python benchmarks/bench_data.py --num-images 100 --size 512 --output bench_data.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from typing import Any, Dict, List

from effdetmask.data.fashionpedia import load_fashionpedia_json
from effdetmask.data.hdf5_cache import CachedDataset, build_cache
from effdetmask.data.mapper import DatasetMapper
from effdetmask.data.synthetic import ensure_fashion_synth
from effdetmask.data.taxonomy import attribute_id_to_index

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                      "fashionpedia_api_sample", "sample.json")


def _rate(fn: Any, items: Any, repeats: int) -> float:
    t0 = time.perf_counter()
    n = 0
    for _ in range(repeats):
        for i in range(len(items)):
            fn(items[i])
            n += 1
    return n / (time.perf_counter() - t0)


def bench(name: str, dicts: List[Dict[str, Any]], size: int, workers: int, tmp: str,
          repeats: int) -> Dict[str, Any]:
    out = os.path.join(tmp, f"{name}.h5")
    t0 = time.perf_counter()
    build_cache(dicts, out, size, dataset_name=name, workers=workers, progress=False)
    build_rate = len(dicts) / (time.perf_counter() - t0)
    mapper = DatasetMapper(image_size=size, is_train=True,
                           attribute_id_to_index=attribute_id_to_index())
    return dict(dataset=name, images=len(dicts), size=size, build_workers=workers,
                cache_kb_per_image=os.path.getsize(out) / len(dicts) / 1024,
                build_images_per_s=build_rate,
                mapped_per_s_cache=_rate(mapper, CachedDataset(out), repeats),
                mapped_per_s_json=_rate(mapper, dicts, repeats))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num-images", type=int, default=100, help="generated images")
    p.add_argument("--image-size", type=int, default=640, help="long side of generated images")
    p.add_argument("--size", type=int, default=512, help="cache / model input size")
    p.add_argument("--workers", type=int, default=2, help="cache build processes")
    p.add_argument("--repeats", type=int, default=1, help="passes over the data when mapping")
    p.add_argument("--output", default="", help="write the rows as JSON here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = ensure_fashion_synth(tmp, "train", args.num_images, args.image_size, 0)
        rows.append(bench("fashion_synth", load_fashionpedia_json(path, os.path.dirname(path)),
                          args.size, args.workers, tmp, args.repeats))
        if os.path.isfile(SAMPLE):
            dicts = load_fashionpedia_json(SAMPLE, os.path.join(os.path.dirname(SAMPLE), "images"))
            rows.append(bench("fashionpedia_sample", dicts, args.size, args.workers, tmp,
                              max(args.repeats, 5)))
    cols = ["dataset", "images", "cache_kb_per_image", "build_images_per_s",
            "mapped_per_s_cache", "mapped_per_s_json"]
    print(" | ".join(f"{c:>20}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]:>20.1f}" if isinstance(r[c], float) else f"{r[c]:>20}"
                         for c in cols))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
