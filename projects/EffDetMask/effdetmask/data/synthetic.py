"""A seeded generator of a small dataset in Fashionpedia JSON format (the embedded default data).

Each image shows 1-3 people-like figures (head, torso, arms, legs) wearing garments named by the
real Fashionpedia taxonomy: an upper garment ("shirt, blouse", "top, t-shirt, sweatshirt",
"jacket") or a "dress" with its parts ("sleeve", "collar", "pocket", "neckline") overlapping the
garment mask as in Fashionpedia, a lower garment ("pants", "shorts", "skirt"), "shoe"s,
"bag, wallet", "glasses", "hat", "belt". Colours and textures (plain, stripes, dots, checks) are
drawn independently of the class, the background has gradients and garment-like clutter, and
figures occlude each other, so a model has to learn shape and context. Attributes are real
sparse ids that match what is drawn (pattern, sleeve length, neckline type, skirt length, "jeans").

Layout: ``root/fashion_synth/<split>_n<images>_s<size>_seed<seed>/instances_attributes.json``
(one folder per parameter set, see :func:`synth_split_dir`) with the JPEGs next to it
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
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

from effdetmask.data.taxonomy import load_taxonomy

logger = logging.getLogger(__name__)

__all__ = ["ensure_fashion_synth", "generate_fashion_synth", "GENERATOR_VERSION", "JSON_NAME"]

GENERATOR_VERSION = 1  # bump when the drawing changes, so stored datasets get regenerated
JSON_NAME = "instances_attributes.json"
# Splits draw from disjoint seed streams, so "train" and "val" never share an image.
_SPLIT_SEED_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_003}
Poly = np.ndarray  # float32 [K, 2] (x, y) image pixels


class _Canvas:
    """The image being drawn plus the visible mask of every instance placed so far."""

    def __init__(self, img: np.ndarray) -> None:
        self.img = img  # uint8 [H, W, 3] RGB
        self.h, self.w = img.shape[:2]
        self.instances: List[Dict[str, Any]] = []

    def rasterize(self, polys: Sequence[Poly]) -> np.ndarray:
        m = np.zeros((self.h, self.w), np.uint8)
        cv2.fillPoly(m, [np.round(p).astype(np.int32) for p in polys], 1)
        return m

    def paint(self, rng: np.random.Generator, polys: Sequence[Poly], group: int,
              color: Optional[np.ndarray] = None, pattern: str = "plain",
              outline: bool = True, second: Optional[np.ndarray] = None) -> np.ndarray:
        """Fill ``polys`` with a textured colour; hide earlier other-group instances under it."""
        m = self.rasterize(polys)
        ys, xs = np.nonzero(m)
        if len(ys) == 0:
            return m
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        sub = m[y0:y1, x0:x1].astype(bool)
        color = _random_color(rng) if color is None else color
        tex = _texture(rng, y1 - y0, x1 - x0, color, pattern, second)
        self.img[y0:y1, x0:x1][sub] = tex[sub]
        if outline:
            dark = tuple(int(c) for c in (color * 0.45))
            cv2.polylines(self.img, [np.round(p).astype(np.int32) for p in polys], True, dark, 1)
        for inst in self.instances:  # occlusion: same-group parts stay inside their garment
            if inst["group"] != group:
                inst["mask"][y0:y1, x0:x1][sub] = 0
        return m

    def add(self, rng: np.random.Generator, name: str, polys: Sequence[Poly], group: int,
            attrs: Sequence[str] = (), **paint_kw: Any) -> None:
        """Paint a labelled instance (category ``name``, attribute names ``attrs``)."""
        m = self.paint(rng, polys, group, **paint_kw)
        self.instances.append(dict(name=name, polys=[p.copy() for p in polys], group=group,
                                   mask=m, full=int(m.sum()), attrs=list(attrs)))


def _random_color(rng: np.random.Generator) -> np.ndarray:
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(40, 256), rng.integers(40, 256)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int, color: np.ndarray, pattern: str,
             second: Optional[np.ndarray] = None) -> np.ndarray:
    """uint8 [h, w, 3] fabric: ``pattern`` in plain/stripe/dot/check, shading and grain noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = float(rng.uniform(4, 12))
    second = _random_color(rng) if second is None else second
    if pattern == "stripe":
        ang = rng.uniform(0, np.pi)
        on = ((xx * np.cos(ang) + yy * np.sin(ang)) % period) < period / 2
    elif pattern == "dot":
        r = period * rng.uniform(0.18, 0.35)
        on = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < r * r
    elif pattern == "check":
        on = ((xx // period + yy // period) % 2) == 0
    else:
        on = np.zeros((h, w), bool)
    tex = np.where(on[..., None], second, color)
    shade = 0.8 + 0.35 * (1 - yy / max(h, 1))[..., None]  # light from above
    tex = tex * shade + rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    return np.clip(tex, 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A two-colour gradient with garment-like clutter (colour alone never means "garment")."""
    c0, c1 = _random_color(rng), _random_color(rng)
    t = np.linspace(0, 1, h if rng.random() < 0.5 else w, dtype=np.float32)
    ramp = c0 + (c1 - c0) * t[:, None]
    img = np.broadcast_to(ramp[:, None] if len(t) == h else ramp[None], (h, w, 3)).copy()
    img = np.clip(img + rng.normal(0, 4, (h, w, 1)), 0, 255).astype(np.uint8)
    canvas = _Canvas(img)
    for _ in range(rng.integers(2, 9)):
        cx, cy, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.3) * max(h, w)
        k = int(rng.integers(3, 7))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        pts = np.stack([cx + s * np.cos(ang), cy + s * rng.uniform(0.3, 1) * np.sin(ang)], 1)
        canvas.paint(rng, [pts.astype(np.float32)], -1,
                     pattern=str(rng.choice(["plain", "stripe", "dot", "check"])), outline=False)
    return canvas.img


def _quad(p0: np.ndarray, p1: np.ndarray, w0: float, w1: float) -> Poly:
    """A tapered limb from ``p0`` (width ``w0``) to ``p1`` (width ``w1``)."""
    d = (p1 - p0) / (np.linalg.norm(p1 - p0) + 1e-6)
    n = np.array([-d[1], d[0]])
    return np.stack([p0 + n * w0 / 2, p1 + n * w1 / 2, p1 - n * w1 / 2, p0 - n * w0 / 2]).astype(
        np.float32)


def _ellipse(c: Sequence[float], ax: float, ay: float, a0: float = 0, a1: float = 360) -> Poly:
    pts = cv2.ellipse2Poly((0, 0), (1000, 1000), 0, int(a0), int(a1), 15).astype(np.float32) / 1000
    return (pts * [ax, ay] + np.asarray(c, np.float32)).astype(np.float32)


def _draw_person(rng: np.random.Generator, cv: _Canvas, cx: float, top: float, P: float,
                 gid: int) -> None:
    """One figure of height ``P`` pixels; ``gid`` numbers its occlusion groups."""
    pick = lambda xs: str(rng.choice(xs))  # noqa: E731
    skin = np.float32([rng.uniform(90, 240), rng.uniform(60, 190), rng.uniform(40, 160)])
    sh_y, waist_y, hip_y, foot_y = top + 0.17 * P, top + 0.46 * P, top + 0.53 * P, top + 0.96 * P
    sw, hw = rng.uniform(0.11, 0.15) * P, rng.uniform(0.09, 0.12) * P
    arm_l, arm_w, leg_w = 0.38 * P, 0.055 * P, 0.085 * P
    arms = []
    for side in (-1, 1):
        ang = np.deg2rad(rng.uniform(8, 40))
        s = np.float32([cx + side * sw, sh_y + 0.02 * P])
        arms.append((s, s + arm_l * np.float32([side * np.sin(ang), np.cos(ang)])))
    legs = []
    for side in (-1, 1):
        h0 = np.float32([cx + side * hw * 0.5, hip_y])
        legs.append((h0, np.float32([h0[0] + side * rng.uniform(0, 0.08) * P, foot_y])))
    sk = dict(color=skin, outline=False)
    for a, b in arms:
        cv.paint(rng, [_quad(a, b, arm_w, arm_w * 0.8)], gid, **sk)
    for a, b in legs:
        cv.paint(rng, [_quad(a, b, leg_w, leg_w * 0.7)], gid, **sk)
    torso = np.float32([[cx - sw, sh_y], [cx + sw, sh_y], [cx + hw, hip_y], [cx - hw, hip_y]])
    cv.paint(rng, [torso, _quad(np.float32([cx, top + 0.1 * P]), np.float32([cx, sh_y + 5]),
                                0.06 * P, 0.07 * P)], gid, **sk)
    head_c = (cx + rng.uniform(-0.01, 0.01) * P, top + 0.075 * P)
    cv.paint(rng, [_ellipse(head_c, 0.055 * P, 0.07 * P)], gid, **sk)

    # lower garment (skipped under a dress)
    wear_dress = rng.random() < 0.25
    if not wear_dress:
        lower = pick(["pants", "pants", "shorts", "skirt"])
        pat = pick(["plain", "plain", "stripe", "check"])
        attrs = [f"{pat} (pattern)" if pat == "plain" else pat]
        if lower == "skirt":
            length = pick(["mini (length)", "knee (length)", "maxi (length)"])
            f = {"mini (length)": 0.3, "knee (length)": 0.55, "maxi (length)": 0.9}[length]
            y1 = hip_y + f * (foot_y - hip_y)
            flare = rng.uniform(0.02, 0.09) * P
            polys = [np.float32([[cx - hw, waist_y], [cx + hw, waist_y],
                                 [cx + hw * 1.1 + flare, y1], [cx - hw * 1.1 - flare, y1]])]
            attrs.append(length)
        else:
            f = 1.0 if lower == "pants" else rng.uniform(0.25, 0.4)
            polys = [np.float32([[cx - hw * 1.05, waist_y], [cx + hw * 1.05, waist_y]])]
            waist = polys[0]
            polys = [np.concatenate([waist, _quad(a, a + (b - a) * f, leg_w * 1.25, leg_w * 1.1)])
                     for a, b in legs]
            polys = [cv2.convexHull(p).reshape(-1, 2).astype(np.float32) for p in polys]
            attrs.append("maxi (length)" if lower == "pants" else "mini (length)")
        color = None
        if lower == "pants" and pat == "plain" and rng.random() < 0.4:
            color, attrs = np.float32([rng.uniform(30, 80), rng.uniform(50, 100), 160]), attrs + [
                "jeans"]
        cv.add(rng, lower, polys, gid + 1, attrs, pattern=pat, color=color)

    # upper garment or dress, with parts sharing its occlusion group
    upper = "dress" if wear_dress else pick(["shirt, blouse", "top, t-shirt, sweatshirt", "jacket"])
    pat = pick(["plain", "plain", "stripe", "dot", "check"])
    color, second = _random_color(rng), _random_color(rng)  # sleeves/pockets match the garment
    bottom = hip_y + 0.03 * P
    if upper == "dress":
        bottom = hip_y + rng.uniform(0.3, 0.85) * (foot_y - hip_y)
    flare = (rng.uniform(0.03, 0.12) * P) if upper == "dress" else 0.01 * P
    body = np.float32([[cx - sw * 1.05, sh_y - 2], [cx + sw * 1.05, sh_y - 2], [cx + hw, waist_y],
                       [cx + hw + flare, bottom], [cx - hw - flare, bottom], [cx - hw, waist_y]])
    sleeve_len = pick(["short (length)", "elbow-length", "wrist-length"])
    if upper == "jacket":
        sleeve_len = "wrist-length"
    frac = {"short (length)": 0.3, "elbow-length": 0.55, "wrist-length": 0.93}[sleeve_len]
    sleeves = [_quad(a, a + (b - a) * frac, arm_w * 1.5, arm_w * 1.3) for a, b in arms]
    ug = gid + 2
    cv.add(rng, upper, [body] + sleeves, ug, [f"{pat} (pattern)" if pat == "plain" else pat],
           color=color, pattern=pat, second=second)
    for s in sleeves:
        cv.add(rng, "sleeve", [s], ug, [sleeve_len], color=color, pattern=pat, second=second)
    nk = pick(["v-neck", "round (neck)"])
    nw, nd = rng.uniform(0.03, 0.05) * P, rng.uniform(0.04, 0.1) * P
    if nk == "v-neck":
        neck = np.float32([[cx - nw, sh_y - 1], [cx + nw, sh_y - 1], [cx, sh_y + nd]])
    else:
        neck = _ellipse((cx, sh_y - 1), nw, nd * 0.6, 0, 180)
    cv.add(rng, "neckline", [neck], ug, [nk], color=skin, outline=True)
    if upper in ("shirt, blouse", "jacket"):
        for side in (-1, 1):
            flap = np.float32([[cx + side * nw, sh_y - 3], [cx + side * (nw + 0.06 * P), sh_y],
                               [cx + side * nw * 0.4, sh_y + 0.07 * P]])
            cv.add(rng, "collar", [flap], ug, color=color * 0.85, pattern="plain")
    n_pockets = {"shirt, blouse": int(rng.integers(0, 2)), "jacket": 2}.get(upper, 0)
    for k in range(n_pockets):
        side = 1 if n_pockets == 1 else (-1, 1)[k]
        py = sh_y + 0.08 * P if upper == "shirt, blouse" else waist_y
        px = cx + side * sw * 0.5
        s = rng.uniform(0.035, 0.05) * P
        cv.add(rng, "pocket", [np.float32([[px - s, py], [px + s, py], [px + s, py + 1.2 * s],
                                           [px - s, py + 1.2 * s]])], ug, color=color, pattern=pat,
               second=second)
    if wear_dress and rng.random() < 0.5:
        cv.add(rng, "belt", [_quad(np.float32([cx - hw, waist_y]), np.float32([cx + hw, waist_y]),
                                   0.025 * P, 0.025 * P)], gid + 3)

    for i, (a, b) in enumerate(legs):  # shoes cover the trouser hems
        cv.add(rng, "shoe", [_ellipse((b[0] + (i * 2 - 1) * 0.02 * P, b[1]), 0.05 * P, 0.025 * P)],
               gid + 4 + i, color=_random_color(rng) * 0.6)
    if rng.random() < 0.35:
        ey = head_c[1] - 0.005 * P
        lens = [_ellipse((head_c[0] + s * 0.022 * P, ey), 0.018 * P, 0.012 * P) for s in (-1, 1)]
        cv.add(rng, "glasses", lens, gid + 6, color=np.float32([20, 20, 20]))
    if rng.random() < 0.3:
        brim = _ellipse((head_c[0], head_c[1] - 0.045 * P), 0.09 * P, 0.015 * P)
        crown = _ellipse((head_c[0], head_c[1] - 0.05 * P), 0.05 * P, 0.045 * P, 180, 360)
        cv.add(rng, "hat", [brim, crown], gid + 7, pattern=pick(["plain", "stripe"]))
    if rng.random() < 0.5:
        hand = arms[int(rng.integers(0, 2))][1]
        bw, bh = rng.uniform(0.05, 0.1) * P, rng.uniform(0.05, 0.09) * P
        bag = np.float32([[hand[0] - bw, hand[1]], [hand[0] + bw, hand[1]],
                          [hand[0] + bw * 1.1, hand[1] + bh], [hand[0] - bw * 1.1, hand[1] + bh]])
        cv.add(rng, "bag, wallet", [bag], gid + 8, pattern=pick(["plain", "check", "dot"]))


def _render(rng: np.random.Generator, image_size: int) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    aspect = rng.uniform(0.6, 1.6)  # width / height
    w, h = (image_size, round(image_size / aspect)) if aspect >= 1 else (
        round(image_size * aspect), image_size)
    cv = _Canvas(_background(rng, h, w))
    n = int(rng.integers(1, 4))
    for k in range(n):  # later figures stand in front of earlier ones
        P = h * rng.uniform(0.45, 1.0)
        cx = rng.uniform(0.12, 0.88) * w
        _draw_person(rng, cv, cx, rng.uniform(-0.03, 1.0) * max(h - P, 0) + 1, P, gid=k * 10)
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
    """The folder of one generated split: its parameters are part of its name, so splits made
    with other parameters (another run's config) live beside it and never replace it."""
    key = f"{split}_n{int(num_images)}_s{int(image_size)}_seed{int(seed)}"
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
