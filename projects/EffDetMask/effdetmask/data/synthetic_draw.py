"""Drawing the generated dataset's figures (see :mod:`effdetmask.data.synthetic`): a canvas that
tracks every instance's visible mask, fabric textures, a cluttered background, and one person
wearing garments whose attributes are drawn (pattern, hem and sleeve lengths, neckline, collar,
pocket and jacket-opening shapes).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np

__all__ = ["Canvas", "background", "draw_person"]

Poly = np.ndarray  # float32 [K, 2] (x, y) image pixels


class Canvas:
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


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A two-colour gradient with garment-like clutter (colour alone never means "garment")."""
    c0, c1 = _random_color(rng), _random_color(rng)
    t = np.linspace(0, 1, h if rng.random() < 0.5 else w, dtype=np.float32)
    ramp = c0 + (c1 - c0) * t[:, None]
    img = np.broadcast_to(ramp[:, None] if len(t) == h else ramp[None], (h, w, 3)).copy()
    img = np.clip(img + rng.normal(0, 4, (h, w, 1)), 0, 255).astype(np.uint8)
    canvas = Canvas(img)
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


_HEM = {"mini (length)": 0.3, "knee (length)": 0.55, "maxi (length)": 0.9}  # of hip -> foot


def _draw_opening(img: np.ndarray, opening: str, cx: float, y0: float, y1: float, P: float,
                  color: np.ndarray) -> None:
    """Draw a jacket's front opening down its centre line: buttons or a zip."""
    if y1 <= y0:
        return
    dark = tuple(int(c) for c in color * 0.35)
    light = tuple(int(c) for c in np.clip(color * 0.6 + 110, 0, 255))
    if opening == "single breasted":
        r = max(1, int(round(0.012 * P)))
        for y in np.linspace(y0, y1, 4):
            cv2.circle(img, (int(round(cx)), int(round(y))), r, dark, -1)
    else:
        x, w = int(round(cx)), max(1, int(round(0.006 * P)))
        cv2.line(img, (x, int(round(y0))), (x, int(round(y1))), light, w)
        for y in np.arange(y0, y1, max(2.0, 0.015 * P)):
            cv2.line(img, (x - w - 1, int(round(y))), (x + w + 1, int(round(y))), dark, 1)


def draw_person(rng: np.random.Generator, cv: Canvas, cx: float, top: float, P: float,
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
            length = pick(list(_HEM))
            y1 = hip_y + _HEM[length] * (foot_y - hip_y)
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
    if upper == "dress":
        length = pick(list(_HEM))
        bottom = hip_y + (_HEM[length] + rng.uniform(-0.04, 0.04)) * (foot_y - hip_y)
    else:
        length = pick(["above-the-hip (length)", "hip (length)"])
        bottom = (waist_y + 0.01 * P) if length == "above-the-hip (length)" else hip_y + 0.03 * P
    flare = (rng.uniform(0.03, 0.12) * P) if upper == "dress" else 0.01 * P
    body = np.float32([[cx - sw * 1.05, sh_y - 2], [cx + sw * 1.05, sh_y - 2], [cx + hw, waist_y],
                       [cx + hw + flare, bottom], [cx - hw - flare, bottom], [cx - hw, waist_y]])
    sleeve_len = pick(["short (length)", "elbow-length", "wrist-length"])
    if upper == "jacket":
        sleeve_len = "wrist-length"
    frac = {"short (length)": 0.3, "elbow-length": 0.55, "wrist-length": 0.93}[sleeve_len]
    sleeves = [_quad(a, a + (b - a) * frac, arm_w * 1.5, arm_w * 1.3) for a, b in arms]
    ug = gid + 2
    attrs = [f"{pat} (pattern)" if pat == "plain" else pat, length]
    opening = None
    if upper == "jacket":
        opening = pick(["single breasted", "zip-up"])
        attrs.append(opening)
    cv.add(rng, upper, [body] + sleeves, ug, attrs, color=color, pattern=pat, second=second)
    if opening is not None:
        _draw_opening(cv.img, opening, cx, sh_y + 0.03 * P, bottom - 0.02 * P, P, color)
    for s in sleeves:
        cv.add(rng, "sleeve", [s], ug, [sleeve_len], color=color, pattern=pat, second=second)
    nk = pick(["v-neck", "round (neck)", "square (neckline)"])
    nw, nd = rng.uniform(0.03, 0.05) * P, rng.uniform(0.05, 0.1) * P
    if nk == "v-neck":
        neck = np.float32([[cx - nw, sh_y - 1], [cx + nw, sh_y - 1], [cx, sh_y + nd]])
    elif nk == "square (neckline)":
        neck = np.float32([[cx - nw, sh_y - 1], [cx + nw, sh_y - 1], [cx + nw, sh_y + nd * 0.6],
                           [cx - nw, sh_y + nd * 0.6]])
    else:
        neck = _ellipse((cx, sh_y - 1), nw, nd * 0.6, 0, 180)
    cv.add(rng, "neckline", [neck], ug, [nk], color=skin, outline=True)
    if upper in ("shirt, blouse", "jacket"):
        collar = pick(["shirt (collar)", "peter pan (collar)"])
        for side in (-1, 1):
            if collar == "shirt (collar)":  # pointed flaps
                flap = np.float32([[cx + side * nw, sh_y - 3], [cx + side * (nw + 0.06 * P), sh_y],
                                   [cx + side * nw * 0.4, sh_y + 0.07 * P]])
            else:  # rounded flaps
                flap = _ellipse((cx + side * (nw + 0.02 * P), sh_y), 0.035 * P, 0.03 * P, 0, 180)
            cv.add(rng, "collar", [flap], ug, [collar], color=color * 0.85, pattern="plain")
    n_pockets = {"shirt, blouse": int(rng.integers(0, 2)), "jacket": 2}.get(upper, 0)
    for k in range(n_pockets):
        side = 1 if n_pockets == 1 else (-1, 1)[k]
        px = cx + side * sw * 0.5
        s = rng.uniform(0.035, 0.05) * P
        # jacket pockets sit low, above the hem (a short jacket ends at the waist)
        py = sh_y + 0.08 * P if upper == "shirt, blouse" else min(waist_y, bottom - 1.5 * s)
        pocket = pick(["patch (pocket)", "flap (pocket)"])
        cv.add(rng, "pocket", [np.float32([[px - s, py], [px + s, py], [px + s, py + 1.2 * s],
                                           [px - s, py + 1.2 * s]])], ug, [pocket], color=color,
               pattern=pat, second=second)
        if pocket == "flap (pocket)":  # a darker band over the opening, inside the pocket
            band = np.float32([[px - s, py], [px + s, py], [px + s, py + 0.45 * s],
                               [px - s, py + 0.45 * s]])
            cv2.fillPoly(cv.img, [np.round(band).astype(np.int32)],
                         tuple(int(c) for c in color * 0.3))
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
