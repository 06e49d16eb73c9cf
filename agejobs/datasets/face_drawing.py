"""Drawing one synthetic face: age look -> geometry -> layered canvas -> pose and photometrics.

Pure functions of (age, gender, identity, nuisance, size); see synthetic.py for what the
cues are and why, and for how identities and nuisances are sampled.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

MALE, FEMALE = 0, 1
# Shapes are drawn at SUPERSAMPLE x the output size and box-filtered down: cheap antialiasing.
SUPERSAMPLE = 2
# How many years a subject's photos span (base age + 0..AGE_SPREAD).
AGE_SPREAD = 4

SKIN_TONES = [
    (255, 224, 196),
    (241, 194, 167),
    (224, 172, 138),
    (198, 134, 96),
    (161, 102, 68),
    (120, 75, 50),
    (90, 56, 38),
]
HAIR_COLORS = [  # (colour, relative frequency)
    ((28, 24, 22), 4),
    ((58, 40, 30), 4),
    ((96, 66, 44), 3),
    ((140, 102, 66), 2),
    ((176, 140, 90), 1),
    ((214, 180, 120), 1),
    ((128, 60, 36), 1),
]
EYE_COLORS = [(90, 60, 40), (60, 40, 28), (80, 120, 170), (90, 120, 80), (120, 95, 55), (110, 120, 130)]
LIPSTICKS = [(170, 30, 50), (200, 70, 90), (140, 40, 60), (210, 90, 100)]
HAIR_STYLES = ("buzz", "short", "bob", "long")
BEARDS = ("none", "stubble", "full", "mustache")
BACKGROUNDS = ("solid", "gradient", "noise", "clutter")


def _ramp(x: float, start: float, span: float) -> float:
    """0 before start, rising linearly to 1 over span years."""
    return min(1.0, max(0.0, (x - start) / span))


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _age_look(age: float, identity: dict) -> dict:
    """How far each visible aging process has gone at this age, every value in 0..1."""
    texture_age = max(0.0, age + identity["aging_offset"])
    return {
        "growth": 1.0 - math.exp(-age / 6.0),  # childhood shape change, ~95 % done at 18
        "wrinkles": min(1.0, _ramp(texture_age, 26, 44) * identity["wrinkle_propensity"]),
        "folds": _ramp(texture_age, 20, 50),
        "gray": _ramp(texture_age, identity["gray_onset"], identity["gray_years"]),
        "recede": _ramp(texture_age, 27, 40) * identity["bald_strength"],
        "sag": _ramp(texture_age, 35, 45),
        "late": _ramp(age, 20, 60),  # slow adult growth of ears and nose
        "spot_rate": max(0.0, texture_age - 45) / 4.0,  # expected number of age spots
        "beard": _ramp(age, 15, 10),
        "blush": 1.0 - _ramp(age, 2, 14),
        "hair_cover": 0.2 + 0.8 * _ramp(age, 0, 3),  # babies have sparse hair
        "hair_length": min(1.0, 0.3 + age / 10.0),  # long hair grows during childhood
    }


@dataclass
class _Geometry:
    """Face layout in supersampled pixels; y grows downwards, cy is the head's widest line."""

    cx: float
    cy: float
    W: float  # half width of the head
    Hc: float  # cranium height above cy
    Hj: float  # jaw height below cy
    taper: float
    square: float
    eye_y: float
    eye_dx: float
    eye_rx: float
    eye_ry: float
    brow_y: float
    nose_y: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_h: float
    ear_h: float

    @property
    def top(self) -> float:
        return self.cy - self.Hc

    @property
    def chin(self) -> float:
        return self.cy + self.Hj


def _geometry(look: dict, identity: dict, S: int) -> _Geometry:
    g, sag, late = look["growth"], look["sag"], look["late"]
    W = 0.2 * S * identity["face_width"]
    Hc = W * _lerp(1.15, 1.02, g)
    # Lower face grows most; jowls lengthen and widen it again in old age.
    Hj = W * (_lerp(0.78, 1.3, g) * identity["jaw_length"] + 0.08 * sag)
    taper = _lerp(0.1, 0.32, g) + identity["jaw_taper"] - 0.14 * sag
    cy = 0.46 * S
    top, chin = cy - Hc, cy + Hj
    eye_y = top + (Hc + Hj) * _lerp(0.6, 0.47, g)  # children's eyes sit low in a big cranium
    eye_rx = W * _lerp(0.17, 0.11, g) * identity["eye_size"]
    eye_ry = eye_rx * _lerp(0.72, 0.55, g) * (1.0 - 0.3 * sag)  # drooping lids in old age
    nose_y = eye_y + (chin - eye_y) * _lerp(0.36, 0.43, g) * identity["nose_length"] * (1 + 0.06 * late)
    mouth_y = eye_y + (chin - eye_y) * _lerp(0.64, 0.68, g)
    return _Geometry(
        cx=S / 2,
        cy=cy,
        W=W,
        Hc=Hc,
        Hj=Hj,
        taper=taper,
        square=identity["jaw_square"],
        eye_y=eye_y,
        eye_dx=W * identity["eye_spacing"],
        eye_rx=eye_rx,
        eye_ry=eye_ry,
        brow_y=eye_y - eye_ry - W * (_lerp(0.17, 0.13, g) - 0.04 * sag),
        nose_y=nose_y,
        nose_w=W * (_lerp(0.14, 0.2, g) + 0.05 * late) * identity["nose_width"],
        mouth_y=mouth_y,
        mouth_w=W * _lerp(0.3, 0.4, g) * identity["mouth_width"],
        lip_h=W * _lerp(0.07, 0.075, g) * identity["lip_thickness"] * (1.0 - 0.45 * sag),
        ear_h=W * (_lerp(0.36, 0.46, g) + 0.12 * late),
    )


# ----------------------------------------------------------------------------- drawing helpers


class _Canvas:
    """Float RGB + alpha layer; shapes arrive as PIL-drawn masks and are blended in numpy."""

    def __init__(self, size: int):
        self.size = size
        self.rgb = np.zeros((size, size, 3), np.float32)
        self.alpha = np.zeros((size, size), np.float32)

    def mask(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        img = Image.new("L", (self.size, self.size), 0)
        return img, ImageDraw.Draw(img)

    def paint(self, mask: Image.Image | np.ndarray, colour, opacity: float = 1.0) -> None:
        """Blend a colour (or an SxSx3 texture) in where mask is set; mask is PIL or float array."""
        box = _bbox(mask)
        if box is None:
            return
        y0, y1, x0, x1 = box  # work on the mask's bounding box only: most shapes are small
        m = _crop(mask, box) * opacity
        colour = np.asarray(colour, np.float32)
        if colour.ndim == 3:
            colour = colour[y0:y1, x0:x1]
        rgb = self.rgb[y0:y1, x0:x1]
        rgb += (colour - rgb) * m[..., None]
        np.maximum(self.alpha[y0:y1, x0:x1], m, out=self.alpha[y0:y1, x0:x1])

    def darken(self, mask: Image.Image | np.ndarray) -> None:
        """Multiply by (1 - mask): the mask's values say how deep each wrinkle or shadow is."""
        box = _bbox(mask)
        if box is None:
            return
        y0, y1, x0, x1 = box
        self.rgb[y0:y1, x0:x1] *= 1.0 - _crop(mask, box)[..., None]

    def to_image(self) -> Image.Image:
        rgba = np.dstack([np.clip(self.rgb, 0, 255), self.alpha * 255.0]).astype(np.uint8)
        return Image.fromarray(rgba, "RGBA")


def _as_float(mask: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(mask, Image.Image):
        return np.asarray(mask, np.float32) / 255.0
    return mask.astype(np.float32, copy=False)


def _bbox(mask: Image.Image | np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) around the mask's nonzero pixels, None when it is empty."""
    if isinstance(mask, Image.Image):
        box = mask.getbbox()
        return None if box is None else (box[1], box[3], box[0], box[2])
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def _crop(mask: Image.Image | np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    y0, y1, x0, x1 = box
    if isinstance(mask, Image.Image):
        return _as_float(mask.crop((x0, y0, x1, y1)))
    return _as_float(mask[y0:y1, x0:x1])


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return yy, xx


def _ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill: int = 255) -> None:
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)


def _head_outline(geo: _Geometry, grow: float = 0.0, points: int = 72) -> list[tuple[float, float]]:
    """Cranium: half ellipse. Jaw: half ellipse pinched towards the chin (more in adults)."""
    t = np.linspace(0, 2 * math.pi, points, endpoint=False)
    x, y = np.cos(t), np.sin(t)
    lower = y > 0
    width = np.where(lower, 1.0 - geo.taper * np.abs(y) ** geo.square, 1.0)
    px = geo.cx + (geo.W + grow) * x * width
    py = geo.cy + np.where(lower, geo.Hj + grow, geo.Hc + grow) * y
    return list(zip(px.tolist(), py.tolist()))


def _hair_texture(size: int, colour, gray: float, curl: float, rng: np.random.Generator) -> np.ndarray:
    """Vertical strands of varying brightness; a gray fraction of them turns gray-white."""
    seg = int(4 + (1.0 - curl) * 24)  # strand length: curly hair breaks into short blobs
    rows = size // seg + 2
    offsets = rng.integers(0, seg, size)  # stagger strand ends so no horizontal seams appear
    strand = (np.arange(size)[:, None] + offsets[None, :]) // seg * size + np.arange(size)[None, :]
    shade = rng.random(rows * size, dtype=np.float32).take(strand)
    is_gray = rng.random(rows * size, dtype=np.float32).take(strand) < gray
    texture = np.asarray(colour, np.float32) * (0.65 + 0.7 * shade)[..., None]
    if gray > 0:
        gray_level = _lerp(150.0, 235.0, gray) * (0.85 + 0.25 * shade[is_gray])
        texture[is_gray] = gray_level[:, None]
    return texture


# ----------------------------------------------------------------------------- face parts


def _draw_back_hair(canvas: _Canvas, geo: _Geometry, identity: dict, look: dict, texture: np.ndarray) -> None:
    """Long hair and bobs hang behind the head and neck."""
    style = identity["hair_style"]
    if style not in ("long", "bob"):
        return
    yy, xx = _grid(canvas.size)
    dx = (xx - geo.cx) / geo.W
    volume = 0.12 * geo.W * identity["hair_volume"]
    length = geo.W * (2.3 if style == "long" else 1.25) * look["hair_length"]
    half_width = 1.1 + 0.12 * identity["hair_volume"]
    crown = (dx / half_width) ** 2 + ((yy - geo.cy) / (geo.Hc + volume)) ** 2 <= 1.0
    hang = (np.abs(dx) < half_width) & (yy >= geo.cy) & (yy < geo.cy + length * (1.0 - 0.15 * dx**2))
    canvas.paint((crown | hang).astype(np.float32), texture, look["hair_cover"])


def _draw_body(canvas: _Canvas, geo: _Geometry, skin: np.ndarray, look: dict, nuisance: dict) -> None:
    S = canvas.size
    mask, draw = canvas.mask()
    half = 0.5 * S * (0.75 + 0.25 * look["growth"])
    draw.ellipse([geo.cx - half, geo.chin + 0.12 * S, geo.cx + half, geo.chin + 0.7 * S], fill=255)
    canvas.paint(mask, nuisance["clothing_color"])
    mask, draw = canvas.mask()
    neck = 0.5 * geo.W
    draw.rectangle([geo.cx - neck, geo.cy + 0.3 * geo.Hj, geo.cx + neck, geo.chin + 0.2 * S], fill=255)
    canvas.paint(mask, skin * 0.82)


def _draw_head(canvas: _Canvas, geo: _Geometry, skin: np.ndarray) -> np.ndarray:
    """Ears and head; returns the head mask (used to keep skin textures on the face)."""
    mask, draw = canvas.mask()
    ear_y = (geo.eye_y + geo.nose_y) / 2
    for side in (-1, 1):
        _ellipse(draw, geo.cx + side * geo.W * 0.97, ear_y, geo.W * 0.14, geo.ear_h / 2)
    canvas.paint(mask, skin * 0.93)
    mask, draw = canvas.mask()
    for side in (-1, 1):
        _ellipse(draw, geo.cx + side * geo.W * 1.0, ear_y, geo.W * 0.06, geo.ear_h / 3.5)
    canvas.paint(mask, skin * 0.7)
    head, draw = canvas.mask()
    draw.polygon(_head_outline(geo), fill=255)
    head_mask = _as_float(head)
    canvas.paint(head_mask, skin)
    return head_mask


def _draw_skin_marks(
    canvas: _Canvas,
    geo: _Geometry,
    skin: np.ndarray,
    look: dict,
    head_mask: np.ndarray,
    rng: np.random.Generator,
    id_rng: np.random.Generator,
) -> None:
    """Blotchy tone, age spots and children's rosy cheeks."""
    S = canvas.size
    # Uneven tone grows with age: low-frequency noise whose amplitude follows sag.
    blotch = Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8)).resize((S, S), Image.BILINEAR)
    amplitude = 0.03 + 0.1 * look["sag"]
    canvas.rgb *= 1.0 + (amplitude * (_as_float(blotch) - 0.5) * head_mask)[..., None]
    # Spot positions come from the identity generator so a person keeps the same spots.
    n_spots = int(id_rng.poisson(look["spot_rate"])) if look["spot_rate"] > 0 else 0
    if n_spots:
        mask, draw = canvas.mask()
        for _ in range(min(n_spots, 20)):
            x = geo.cx + id_rng.uniform(-0.8, 0.8) * geo.W
            y = geo.top + id_rng.uniform(0.2, 0.95) * (geo.chin - geo.top)
            r = id_rng.uniform(0.02, 0.045) * geo.W
            _ellipse(draw, x, y, r, r * id_rng.uniform(0.7, 1.0))
        canvas.paint(_as_float(mask) * head_mask, skin * np.array([0.72, 0.6, 0.5]), 0.75)
    if look["blush"] > 0.05:
        mask, draw = canvas.mask()
        cheek_y = (geo.nose_y + geo.mouth_y) / 2
        for side in (-1, 1):
            _ellipse(draw, geo.cx + side * geo.W * 0.52, cheek_y, geo.W * 0.17, geo.W * 0.12)
        blurred = mask.filter(ImageFilter.GaussianBlur(geo.W * 0.06))
        canvas.paint(blurred, np.array([235, 120, 120]), 0.35 * look["blush"])


def _draw_wrinkles(canvas: _Canvas, geo: _Geometry, look: dict, rng: np.random.Generator) -> None:
    """Forehead lines, crow's feet, nasolabial and marionette folds, eye bags; mask value = depth."""
    w, folds, sag = look["wrinkles"], look["folds"], look["sag"]
    if w <= 0 and folds <= 0:
        return
    mask, draw = canvas.mask()
    width = max(1, round(geo.W * 0.025))
    cx, W = geo.cx, geo.W
    if w > 0:
        depth = int(255 * (0.12 + 0.3 * w))
        hairline = geo.top + 0.3 * (geo.brow_y - geo.top)
        lines = int(round(1 + 4 * w))
        for i in range(lines):
            y = geo.brow_y - 0.12 * W - i * (geo.brow_y - 0.12 * W - hairline) / (lines + 0.5)
            half = W * rng.uniform(0.35, 0.55)
            bend = W * rng.uniform(0.02, 0.06)
            xs = np.linspace(-half, half, 7)
            ys = y + bend * (xs / half) ** 2 + rng.normal(0, 0.008 * W, 7)
            draw.line(list(zip((cx + xs).tolist(), ys.tolist())), fill=depth, width=width)
        for side in (-1, 1):  # crow's feet fan out from the outer eye corner
            corner_x = cx + side * (geo.eye_dx + geo.eye_rx * 1.15)
            for angle in np.linspace(-0.5, 0.5, 2 + int(2 * w)):
                length = W * (0.08 + 0.12 * w)
                end = (corner_x + side * length * math.cos(angle), geo.eye_y + length * math.sin(angle))
                draw.line([(corner_x, geo.eye_y), end], fill=depth, width=width)
    if folds > 0:
        depth = int(255 * (0.08 + 0.32 * folds))
        for side in (-1, 1):  # nasolabial fold: nose wing to beyond the mouth corner
            start = (cx + side * geo.nose_w * 1.2, geo.nose_y - 0.03 * W)
            mid = (cx + side * (geo.mouth_w + 0.1 * W), (geo.nose_y + geo.mouth_y) / 2 + 0.04 * W)
            end = (cx + side * (geo.mouth_w + 0.1 * W), geo.mouth_y + 0.12 * W)
            draw.line([start, mid, end], fill=depth, width=width)
    if sag > 0:
        depth = int(255 * 0.35 * sag)
        for side in (-1, 1):
            ex = cx + side * geo.eye_dx
            bag_y = geo.eye_y + geo.eye_ry * 1.5
            draw.arc(
                [ex - geo.eye_rx, bag_y - 0.1 * W, ex + geo.eye_rx, bag_y + 0.05 * W], 20, 160, fill=depth, width=width
            )
            if sag > 0.3:  # marionette lines from the mouth corners down
                mx = cx + side * geo.mouth_w * 0.95
                draw.line(
                    [(mx, geo.mouth_y + 0.03 * W), (mx + side * 0.03 * W, geo.mouth_y + 0.25 * W)],
                    fill=depth,
                    width=width,
                )
    canvas.darken(mask)


def _draw_beard(
    canvas: _Canvas,
    geo: _Geometry,
    gender: int,
    identity: dict,
    look: dict,
    head_mask: np.ndarray,
    texture: np.ndarray | None,
    rng: np.random.Generator,
) -> None:
    style = identity["beard"]
    if gender != MALE or style == "none" or texture is None or look["beard"] <= 0:
        return
    yy, xx = _grid(canvas.size)
    dx = np.abs(xx - geo.cx) / geo.W
    if style == "mustache":
        region = (
            (dx < geo.mouth_w / geo.W * 1.05) & (yy > geo.nose_y + 0.06 * geo.W) & (yy < geo.mouth_y - 0.02 * geo.W)
        )
        canvas.paint(region.astype(np.float32), texture, 0.9 * look["beard"])
        return
    # Below a line that runs under the nose and rises along the cheeks into sideburns.
    beard_top = geo.nose_y + 0.08 * geo.W - (geo.nose_y - geo.cy) * 1.1 * dx**2
    if style == "full":
        jaw, draw = canvas.mask()
        draw.polygon(_head_outline(geo, grow=0.08 * geo.W), fill=255)
        region = _as_float(jaw) * (yy > beard_top)
        canvas.paint(region, texture, 0.92 * look["beard"])
    else:  # stubble: sparse dark dots
        dots = rng.random(yy.shape, dtype=np.float32) < 0.45 * look["beard"]
        canvas.paint(head_mask * (yy > beard_top) * dots, texture * 0.6, 0.55)


def _draw_eyes_and_brows(
    canvas: _Canvas, geo: _Geometry, identity: dict, look: dict, nuisance: dict, skin: np.ndarray
) -> None:
    W = geo.W
    whites, draw = canvas.mask()
    for side in (-1, 1):
        _ellipse(draw, geo.cx + side * geo.eye_dx, geo.eye_y, geo.eye_rx, geo.eye_ry)
    canvas.paint(whites, np.array([240, 238, 232]))
    iris_r = min(geo.eye_ry * 0.95, geo.eye_rx * 0.6)
    gx, gy = nuisance["gaze"]
    iris, draw_iris = canvas.mask()
    pupil, draw_pupil = canvas.mask()
    for side in (-1, 1):
        x = geo.cx + side * geo.eye_dx + gx * (geo.eye_rx - iris_r)
        y = geo.eye_y + gy * 0.3 * geo.eye_ry
        _ellipse(draw_iris, x, y, iris_r, iris_r)
        _ellipse(draw_pupil, x, y, iris_r * 0.45, iris_r * 0.45)
    # Iris and pupil stay inside the eye opening.
    canvas.paint(_as_float(iris) * _as_float(whites), identity["eye_color"])
    canvas.paint(_as_float(pupil) * _as_float(whites), np.array([15, 12, 12]))
    lids, draw = canvas.mask()
    width = max(1, round(W * 0.03))
    for side in (-1, 1):
        x = geo.cx + side * geo.eye_dx
        box = [x - geo.eye_rx, geo.eye_y - geo.eye_ry, x + geo.eye_rx, geo.eye_y + geo.eye_ry]
        draw.arc(box, 180, 360, fill=255, width=width)
        crease = [x - geo.eye_rx, geo.eye_y - geo.eye_ry * 1.8, x + geo.eye_rx, geo.eye_y + geo.eye_ry * 0.4]
        draw.arc(crease, 200, 340, fill=int(60 * look["growth"]), width=width)
    canvas.paint(lids, skin * 0.35)
    # Brows: a tapered, arched band; thicker in men, fainter in toddlers, graying late.
    brows, draw = canvas.mask()
    thickness = W * 0.05 * identity["brow_thickness"] * (0.5 + 0.5 * look["growth"])
    for side in (-1, 1):
        x0 = geo.cx + side * geo.eye_dx
        u = np.linspace(0, 1, 8)
        xs = x0 + side * (-1.1 + 2.3 * u) * geo.eye_rx
        ys = geo.brow_y - identity["brow_arch"] * W * np.sin(math.pi * np.clip(u * 1.2, 0, 1))
        half = thickness * (1.0 - 0.6 * u)
        upper = list(zip(xs.tolist(), (ys - half).tolist()))
        lower = list(zip(xs.tolist(), (ys + half).tolist()))
        draw.polygon(upper + lower[::-1], fill=255)
    brow_colour = _lerp(np.asarray(identity["hair_color"]), np.array([200.0, 200.0, 200.0]), 0.7 * look["gray"])
    canvas.paint(brows, brow_colour, 0.9)


def _draw_nose(canvas: _Canvas, geo: _Geometry, look: dict) -> None:
    W, g = geo.W, look["growth"]
    shade, draw = canvas.mask()
    width = max(1, round(W * 0.03))
    # Bridge shadow on one side: barely there in small children.
    bridge_top = geo.eye_y + 0.25 * (geo.nose_y - geo.eye_y)
    draw.line(
        [(geo.cx - 0.08 * W, bridge_top), (geo.cx - geo.nose_w * 0.5, geo.nose_y - 0.06 * W)],
        fill=int(90 * g),
        width=width,
    )
    draw.arc(
        [geo.cx - geo.nose_w, geo.nose_y - 0.12 * W, geo.cx + geo.nose_w, geo.nose_y + 0.05 * W],
        20,
        160,
        fill=110,
        width=width,
    )
    for side in (-1, 1):
        _ellipse(draw, geo.cx + side * geo.nose_w * 0.4, geo.nose_y, geo.nose_w * 0.22, geo.nose_w * 0.13, fill=170)
    canvas.darken(shade)


def _draw_mouth(
    canvas: _Canvas, geo: _Geometry, gender: int, identity: dict, look: dict, nuisance: dict, skin: np.ndarray
) -> None:
    W = geo.W
    u = np.linspace(-1, 1, 13)
    # Smiling raises the corners; the line through the lips bends with it.
    line_y = geo.mouth_y + nuisance["smile"] * 0.12 * geo.mouth_w * (1 - u**2) - nuisance["smile"] * 0.03 * W
    xs = geo.cx + u * geo.mouth_w
    profile = (1 - u**2) ** 0.7
    bow = 0.25 * geo.lip_h * np.exp(-((u / 0.15) ** 2))  # the dip of the cupid's bow
    upper = line_y - geo.lip_h * 0.9 * profile + bow
    lower = line_y + geo.lip_h * 1.1 * profile
    lips, draw = canvas.mask()
    draw.polygon(list(zip(xs.tolist(), upper.tolist())) + list(zip(xs[::-1].tolist(), lower[::-1].tolist())), fill=255)
    colour = np.asarray(identity["lip_color"], float)
    if gender == FEMALE and identity["lipstick"] is not None and look["growth"] > 0.9:  # adult women only
        colour = np.asarray(identity["lipstick"], float)
    colour = _lerp(colour, skin * 0.9, 0.35 * look["sag"])  # lips pale and thin with age
    canvas.paint(lips, colour)
    seam, draw = canvas.mask()
    draw.line(list(zip(xs.tolist(), line_y.tolist())), fill=200, width=max(1, round(W * 0.025)))
    canvas.darken(_as_float(seam) * 0.6)


def _draw_front_hair(canvas: _Canvas, geo: _Geometry, identity: dict, look: dict, texture: np.ndarray) -> None:
    """Hair on top of the head, bounded below by the (possibly receding) hairline."""
    yy, xx = _grid(canvas.size)
    style = identity["hair_style"]
    dx = (xx - geo.cx) / geo.W
    volume = geo.W * {"buzz": 0.02, "short": 0.08, "bob": 0.12, "long": 0.12}[style] * identity["hair_volume"]
    volume *= look["hair_cover"]
    cap = (dx * geo.W / (geo.W * 1.04 + volume)) ** 2 + (
        (yy - geo.cy - 0.05 * geo.W) / (geo.Hc + 0.05 * geo.W + volume)
    ) ** 2 <= 1
    forehead = geo.brow_y - geo.top
    fringe = identity["fringe"] and style != "buzz"
    hairline_mid = geo.top + (0.62 if fringe else 0.3) * forehead
    curvature = 0.12 if fringe else 0.5
    recede = look["recede"]
    hairline_mid = _lerp(hairline_mid, geo.top - 0.15 * geo.W, recede)
    curvature = curvature + 1.3 * recede
    hairline = hairline_mid + curvature * geo.W * dx**2
    side_limit = geo.eye_y - 0.1 * geo.W if style in ("buzz", "short") else geo.cy + 0.4 * geo.W
    region = cap & (yy < hairline) & (yy < side_limit)
    if style in ("long", "bob"):  # strands falling past the temples in front of the ears
        length = geo.W * (2.3 if style == "long" else 1.25) * look["hair_length"]
        region |= (
            (np.abs(dx) > 0.86)
            & (np.abs(dx) < 1.1 + 0.12 * identity["hair_volume"])
            & (yy > geo.cy - 0.5 * geo.W)
            & (yy < geo.cy + length * 0.9)
        )
    opacity = look["hair_cover"] * (0.8 if style == "buzz" else 1.0)
    canvas.paint(region.astype(np.float32), texture, opacity)


# ----------------------------------------------------------------------------- scene


def _background(S: int, nuisance: dict, rng: np.random.Generator) -> Image.Image:
    c1, c2 = (np.asarray(c, np.float32) for c in nuisance["bg_colors"])
    kind = nuisance["background"]
    if kind == "solid":
        arr = np.broadcast_to(c1, (S, S, 3))
    elif kind == "gradient":
        yy, xx = _grid(S)
        angle = rng.uniform(0, 2 * math.pi)
        t = ((xx - S / 2) * math.cos(angle) + (yy - S / 2) * math.sin(angle)) / S + 0.5
        arr = c1 + (c2 - c1) * np.clip(t, 0, 1)[..., None]
    elif kind == "noise":
        k = int(rng.integers(3, 12))
        small = Image.fromarray((rng.random((k, k)) * 255).astype(np.uint8))
        t = _as_float(small.resize((S, S), Image.BICUBIC))
        arr = c1 + (c2 - c1) * t[..., None]
    else:  # clutter: random shapes standing in for a room behind the person
        img = Image.new("RGB", (S, S), tuple(int(v) for v in c1))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(4, 12))):
            x0, y0 = rng.uniform(-0.2, 1.0, 2) * S
            w, h = rng.uniform(0.1, 0.6, 2) * S
            colour = tuple(int(v) for v in rng.uniform(0, 255, 3))
            shape = rng.integers(3)
            if shape == 0:
                draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
            elif shape == 1:
                draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
            else:
                draw.line([x0, y0, x0 + w, y0 + h], fill=colour, width=int(rng.integers(2, 8)))
        return img.convert("RGBA")
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").convert("RGBA")


def _apply_pose(layer: Image.Image, nuisance: dict) -> Image.Image:
    """Rotate, scale and shift the face layer about the image centre."""
    S = layer.size[0]
    theta = math.radians(nuisance["rotation_deg"])
    s = nuisance["scale"]
    tx, ty = (v * S for v in nuisance["shift"])
    c, si = math.cos(theta) / s, math.sin(theta) / s
    # PIL wants the inverse map: output pixel (x, y) -> input pixel.
    ox, oy = S / 2 + tx, S / 2 + ty
    coeffs = (c, si, S / 2 - c * ox - si * oy, -si, c, S / 2 + si * ox - c * oy)
    # Premultiplied alpha keeps the transparent surround from bleeding dark into the edges.
    return layer.convert("RGBa").transform((S, S), Image.AFFINE, coeffs, resample=Image.BILINEAR).convert("RGBA")


def _photometric(arr: np.ndarray, nuisance: dict, rng: np.random.Generator) -> np.ndarray:
    size = arr.shape[0]
    yy, xx = _grid(size)
    u, v = (xx / size - 0.5) * 2, (yy / size - 0.5) * 2
    angle = nuisance["light_angle"]
    light = 1.0 + nuisance["light_strength"] * (u * math.cos(angle) + v * math.sin(angle))
    mean = arr.mean()
    arr = (arr - mean) * nuisance["contrast"] + mean
    arr = arr * nuisance["brightness"] * light[..., None] * (1.0 + np.asarray(nuisance["color_cast"], np.float32))
    arr = arr + rng.normal(0.0, nuisance["noise_sigma"], arr.shape).astype(np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8)


def render_face(age: float, gender: int, identity: dict, nuisance: dict, size: int) -> np.ndarray:
    """Draw one face photo (HxWx3 uint8); pure function of its arguments."""
    S = size * SUPERSAMPLE
    rng = np.random.default_rng([identity["texture_seed"], nuisance["seed"]])  # per-photo detail
    id_rng = np.random.default_rng(identity["texture_seed"])  # per-person detail (age spots)
    look = _age_look(age, identity)
    geo = _geometry(look, identity, S)
    skin = np.asarray(identity["skin"], np.float32) * (1.0 - 0.05 * look["sag"])
    hair = _hair_texture(S, identity["hair_color"], look["gray"], identity["curl"], rng)
    beard_gray = _ramp(age + identity["aging_offset"], identity["gray_onset"] - 4, identity["gray_years"])
    beard = _hair_texture(S, identity["hair_color"], beard_gray, 1.0, rng) if identity["beard"] != "none" else None

    canvas = _Canvas(S)
    _draw_back_hair(canvas, geo, identity, look, hair)
    _draw_body(canvas, geo, skin, look, nuisance)
    head_mask = _draw_head(canvas, geo, skin)
    _draw_skin_marks(canvas, geo, skin, look, head_mask, rng, id_rng)
    _draw_wrinkles(canvas, geo, look, rng)
    _draw_beard(canvas, geo, gender, identity, look, head_mask, beard, rng)
    _draw_mouth(canvas, geo, gender, identity, look, nuisance, skin)
    _draw_nose(canvas, geo, look)
    _draw_eyes_and_brows(canvas, geo, identity, look, nuisance, skin)
    _draw_front_hair(canvas, geo, identity, look, hair)

    face = _apply_pose(canvas.to_image(), nuisance)
    scene = Image.alpha_composite(_background(S, nuisance, rng), face).convert("RGB").reduce(SUPERSAMPLE)
    if nuisance["blur_radius"] > 0:
        scene = scene.filter(ImageFilter.GaussianBlur(nuisance["blur_radius"]))
    arr = _photometric(np.asarray(scene, np.float32), nuisance, rng)
    if nuisance["precompress_quality"]:  # a photo that was already JPEG'd harder once
        buffer = io.BytesIO()
        Image.fromarray(arr).save(buffer, format="JPEG", quality=nuisance["precompress_quality"])
        arr = np.asarray(Image.open(buffer).convert("RGB"))
    return arr


# ----------------------------------------------------------------------------- dataset
