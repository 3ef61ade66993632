"""A seeded generator of a small dataset in Fashionpedia JSON format (the embedded default data).

Each image shows 1-3 people-like figures (head, torso, arms, legs) wearing garments named by the
real Fashionpedia taxonomy: an upper garment ("shirt, blouse", "top, t-shirt, sweatshirt",
"jacket") or a "dress" with its parts ("sleeve", "collar", "pocket", "neckline") overlapping the
garment mask as in Fashionpedia, a lower garment ("pants", "shorts", "skirt"), "shoe"s,
"bag, wallet", "glasses", "hat", "belt". Colours and textures (plain, stripes, dots, checks) are
drawn independently of the class, the background has gradients and garment-like clutter, and
figures occlude each other, so a model has to learn shape and context.

Attributes are real sparse ids of the final taxonomy, and every one is drawn, so it can be learnt
from pixels: textile pattern (plain / stripe / dot / check texture of the garment; "jeans" is plain
denim blue), the length of skirts and dresses (mini / knee / maxi hem), of tops (above-the-hip /
hip hem), of sleeves (short / elbow-length / wrist-length, skin below), neckline type (v-neck
triangle, round half-ellipse, square), collar (pointed "shirt" / rounded "peter pan" flaps),
pocket ("patch" / "flap" with a darker flap band) and the jacket's opening ("single breasted": a
row of buttons, "zip-up": a zip line).

Layout: ``root/fashion_synth/<split>_n<images>_s<size>_seed<seed>_v<GENERATOR_VERSION>/
instances_attributes.json`` (one folder per parameter set and generator version, see
:func:`synth_split_dir`; a new drawing never replaces a split a run may be reading) with the JPEGs
next to it
(``file_name`` is relative to the JSON's folder). Masks are polygons when fully visible and inside
the image, else compressed COCO RLE; ``bbox``/``area`` come from the mask as pycocotools decodes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import zlib
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

from effdetmask.data.synthetic_draw import Canvas, background, draw_person
from effdetmask.data.taxonomy import load_taxonomy

logger = logging.getLogger(__name__)

__all__ = ["ensure_fashion_synth", "generate_fashion_synth", "GENERATOR_VERSION", "JSON_NAME"]

# bump when the drawing changes: splits are stored per version, so the new drawing is generated
# beside the old one. 2: every attribute is drawn (lengths, collars, pockets, openings, necklines)
GENERATOR_VERSION = 2
JSON_NAME = "instances_attributes.json"
# Splits draw from disjoint seed streams, so "train" and "val" never share an image.
_SPLIT_SEED_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_003}


def _render(rng: np.random.Generator, image_size: int) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    aspect = rng.uniform(0.6, 1.6)  # width / height
    w, h = (image_size, round(image_size / aspect)) if aspect >= 1 else (
        round(image_size * aspect), image_size)
    cv = Canvas(background(rng, h, w))
    n = int(rng.integers(1, 4))
    for k in range(n):  # later figures stand in front of earlier ones
        P = h * rng.uniform(0.45, 1.0)
        cx = rng.uniform(0.12, 0.88) * w
        draw_person(rng, cv, cx, rng.uniform(-0.03, 1.0) * max(h - P, 0) + 1, P, gid=k * 10)
    return cv.img, cv.instances


def _annotation(inst: Dict[str, Any], h: int, w: int, tax: Any) -> Optional[Dict[str, Any]]:
    """COCO annotation of a drawn instance, or None when it is (almost) hidden."""
    visible = int(inst["mask"].sum())
    # An absolute threshold only: a garment's mask contains its parts' masks and both lose the same
    # occluded pixels, so a kept part always comes with its (maybe mostly hidden) garment.
    if visible < 12:
        return None
    polys = inst["polys"]
    inside = all((p >= 0).all() and (p[:, 0] <= w - 1).all() and (p[:, 1] <= h - 1).all()
                 for p in polys)
    if visible == inst["full"] and inside:
        seg: Any = [[round(float(v), 2) for v in p.reshape(-1)] for p in polys]
        rle = mask_util.merge(mask_util.frPyObjects(seg, h, w))
    else:
        rle = mask_util.encode(np.asfortranarray(inst["mask"]))
        seg = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    if mask_util.area(rle) == 0:
        return None
    return dict(category_id=tax.class_name_to_id[inst["name"]], segmentation=seg,
                bbox=[float(v) for v in mask_util.toBbox(rle)], area=float(mask_util.area(rle)),
                iscrowd=0, attribute_ids=sorted(tax.attribute_name_to_id[a] for a in inst["attrs"]))


def generate_fashion_synth(out_dir: str, split: str, num_images: int, image_size: int,
                           seed: int) -> str:
    """Write ``num_images`` JPEGs and ``instances_attributes.json`` into ``out_dir``.

    Returns:
        the JSON path. ``info["generator"]`` holds the parameters, so the same call is recognised.
    """
    tax = load_taxonomy()
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng([seed, _SPLIT_SEED_OFFSET.get(split, zlib.crc32(split.encode()))])
    images, annotations = [], []
    for i in range(num_images):
        img, insts = _render(rng, image_size)
        h, w = img.shape[:2]
        fname = f"{split}_{i:06d}.jpg"
        cv2.imwrite(os.path.join(out_dir, fname), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        images.append(dict(id=i + 1, width=w, height=h, file_name=fname, license=0))
        for inst in insts:
            ann = _annotation(inst, h, w, tax)
            if ann is not None:
                annotations.append(dict(id=len(annotations) + 1, image_id=i + 1, **ann))
    data = dict(
        info=dict(description="EffDetMask synthetic Fashionpedia-format dataset",
                  generator=_params(split, num_images, image_size, seed)),
        licenses=[dict(id=0, name="generated", url="")], images=images, annotations=annotations,
        categories=[dict(id=i, name=n, supercategory=s) for i, (n, s) in
                    enumerate(zip(tax.class_names, tax.class_supercategories))],
        attributes=[dict(id=i, name=n, supercategory=s) for i, n, s in
                    zip(tax.attribute_ids, tax.attribute_names, tax.attribute_supercategories)])
    path = os.path.join(out_dir, JSON_NAME)
    with open(path, "w") as f:
        json.dump(data, f)
    logger.info("fashion_synth %s: %d images, %d instances -> %s", split, num_images,
                len(annotations), out_dir)
    return path


def _params(split: str, num_images: int, image_size: int, seed: int) -> Dict[str, Any]:
    return dict(split=split, num_images=int(num_images), image_size=int(image_size),
                seed=int(seed), version=GENERATOR_VERSION)


def synth_split_dir(root: str, split: str, num_images: int, image_size: int, seed: int) -> str:
    """The folder of one generated split: its parameters and the generator version are part of
    its name, so splits made with other parameters (another run's config) or by another version of
    the drawing live beside it and never replace it."""
    key = f"{split}_n{int(num_images)}_s{int(image_size)}_seed{int(seed)}_v{GENERATOR_VERSION}"
    return os.path.join(root, "fashion_synth", key)


def _is_complete(path: str, want: Dict[str, Any]) -> bool:
    try:
        with open(path) as f:
            return json.load(f).get("info", {}).get("generator") == want
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _exclusive(lock_path: str):
    """Holds an exclusive lock on ``lock_path``: concurrent builders of one split wait here."""
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_fashion_synth(root: str, split: str, num_images: int, image_size: int,
                         seed: int) -> str:
    """Return the split's ``instances_attributes.json`` (in :func:`synth_split_dir`), generating
    it when missing.

    A split is never deleted or replaced once complete, so a run can read it while others
    generate splits of other parameters. It is built in a temporary folder and renamed into
    place under a lock: an interrupted build never leaves a half-written split that looks
    finished (its leftovers are removed by the next build), and a second builder of the same
    split waits for the first and then uses its result. Images lie next to the JSON
    (``image_root = os.path.dirname(json_path)``).
    """
    final = synth_split_dir(root, split, num_images, image_size, seed)
    path = os.path.join(final, JSON_NAME)
    want = _params(split, num_images, image_size, seed)
    if _is_complete(path, want):
        return path
    base, key = os.path.split(final)
    os.makedirs(base, exist_ok=True)
    with _exclusive(final + ".lock"):
        if _is_complete(path, want):  # another process built it while we waited
            return path
        # under the lock nobody else builds this split: what lies here is a killed build's
        stale = [n for n in os.listdir(base) if n.startswith(f".{key}.tmp-")]
        if os.path.isdir(final):
            stale.append(key)
        for name in stale:
            logger.info("removing %s, left by an interrupted build", os.path.join(base, name))
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=base)
        try:
            generate_fashion_synth(tmp, split, num_images, image_size, seed)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path
