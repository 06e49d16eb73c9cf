"""Finding and framing the face: the `data.align` step of THE preprocessing (images.preprocess_face).

    none       the whole image (pre-cropped faces: UTKFace chips, the synthetic faces)
    box        the largest face OpenCV's Haar cascade finds, a square around it plus 25% margin
               (no landmarks: tilt and the box's own jitter stay in the crop)
    landmarks  dlib's HOG face detector -> dlib's 5-point shape predictor (eye corners, nose)
               -> the similarity transform (rotation, scale, shift) that puts the 5 points on
               CANONICAL_LANDMARKS -> one warp straight to the output size

Every call says what it found (`Framed.outcome`): "one_face", "several_faces" (the largest face
was used), "no_face" (the caller's fallback decides: the whole image, or an error row) or
"not_searched" (align none). Nothing here is silent, and nothing downloads: the detector is
compiled into dlib (`dlib-bin`, Boost Software Licence) and the 5-point model ships in the PyPI
package `face-recognition-models` (MIT; the model file itself released into the public domain by
its author, Davis King; README, "Data and licences"). That package also holds dlib's 68-point
model, whose training data forbids commercial use: it is never loaded here.

The canonical chip is UTKFace's own framing, measured: the mean 5 landmarks of 967 UTKFace chips
(every 10th file of ../shared/data/utkface-part1, one face found), mirrored to be left-right
symmetric so that a flipped chip is still canonical. Eye centres sit 30.6% from the top and 38.3%
of the width apart (the chip is 2.6 inter-ocular distances wide: forehead, cheeks and chin in,
most hair out). A model trained on UTKFace chips, aligned or not, sees the same framing that an
aligned archive photo gets.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass

import numpy as np

from agejobs.config import CHOICES

ALIGN_MODES = CHOICES["data.align"]
OUTCOMES = ("one_face", "several_faces", "no_face", "not_searched")

# (x, y) as fractions of the chip, in dlib's 5-point order: the image-right eye's outer and inner
# corner, the image-left eye's outer and inner corner, the base of the nose.
CANONICAL_LANDMARKS = np.array(
    [[0.7740, 0.3012], [0.6181, 0.3111], [0.2260, 0.3012], [0.3819, 0.3111], [0.5000, 0.5894]]
)
SHAPE_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
# Detection and landmarks run on the image shrunk to this longer side: HOG's cost grows with
# pixels, and its 80 px window still finds a face of an eighth of the photo.
DETECT_MAX_SIDE = 640
# (roll in degrees, HOG upsampling) tried in turn until a face is found; all but the first only
# for the misses, so an image without a face costs all ten (~10x a found face). Upsampling once
# finds faces down to ~40 px at 4x the cost; the HOG detector was trained on upright faces and
# misses many rolled past ~10 degrees. Of the 33 re-framed test faces (bench_robustness) that
# the first four passes missed, the rolled views of 10 and 30 degrees found 19.
DETECT_PASSES = ((0, 0), (0, 1), (10, 0), (-10, 0), (20, 0), (-20, 0), (10, 1), (-10, 1), (30, 0), (-30, 0))
# A warp that shrinks more than this resamples from too few taps (aliasing); the image is first
# shrunk by area averaging so that the warp itself scales by about this much.
MIN_WARP_SCALE = 0.5

# Haar boxes (align: box). Faces smaller than FACE_MIN_SIZE px (after the downscale to
# DETECT_MAX_SIDE) are ignored: the archives hold portraits, not crowds.
FACE_CASCADE = "haarcascade_frontalface_default.xml"
FACE_SCALE_FACTOR = 1.1
FACE_MIN_NEIGHBORS = 5
FACE_MIN_SIZE = 40
# The cascade's 24 px window needs context around a face: pre-cropped faces fill the frame, and
# without this gray border (a fraction of the longer side) only 25 of the first 50 UTKFace crops
# were detected, 48 with it.
FACE_DETECT_BORDER = 0.25


@dataclass(frozen=True)
class Framed:
    """The face region of an image: `image` is None when no face was found (the caller falls back)."""

    image: np.ndarray | None
    outcome: str
    faces: int


def frame_face(image: np.ndarray, mode: str, size: int) -> Framed:
    """RGB uint8 image -> the face as `mode` frames it; "landmarks" returns the (size, size) chip,
    "box" a square crop of any size, "none" the image itself."""
    if mode == "none":
        return Framed(image, "not_searched", 0)
    if mode == "box":
        boxes = detect_faces(image)
        if not boxes:
            return Framed(None, "no_face", 0)
        return Framed(crop_face(image, largest(boxes)), _found(len(boxes)), len(boxes))
    if mode == "landmarks":
        return align_face(image, size)
    raise ValueError(f"data.align: {mode!r} is not one of {', '.join(ALIGN_MODES)}")


def _found(count: int) -> str:
    return "one_face" if count == 1 else "several_faces"


def largest(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    return max(boxes, key=lambda box: box[2] * box[3])


# ---------------------------------------------------------------------------------------------
# landmarks (dlib)


def shape_predictor_path() -> str:
    """The 5-point model inside the installed `face-recognition-models` package. Located without
    importing the package: its __init__ needs pkg_resources, which new setuptools no longer has."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "data.align=landmarks needs the package face-recognition-models (pip install face-recognition-models)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", SHAPE_PREDICTOR_FILE)
    if not os.path.exists(path):
        raise RuntimeError(f"data.align=landmarks: {path} is missing from face-recognition-models")
    return path


@functools.lru_cache(maxsize=1)
def _dlib_models():
    """(HOG detector, 5-point predictor), loaded once per process (~10 ms, 9 MB)."""
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(shape_predictor_path())


def detect_landmarks(image: np.ndarray) -> tuple[np.ndarray | None, int]:
    """RGB uint8 -> (5 x 2 landmarks of the largest face in image pixels, or None; faces found)."""
    import cv2

    detector, predictor = _dlib_models()
    scale = min(1.0, DETECT_MAX_SIDE / max(image.shape[:2]))
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1.0 else image
    small = np.ascontiguousarray(small)
    for angle, upsample in DETECT_PASSES:
        # Rolled by `angle`, the upright-trained detector sees a rolled face upright. The whole
        # image turns about its centre, corners cut: faces sit well inside photos.
        rotation = cv2.getRotationMatrix2D((small.shape[1] / 2, small.shape[0] / 2), angle, 1.0)
        view = cv2.warpAffine(small, rotation, small.shape[1::-1], flags=cv2.INTER_LINEAR) if angle else small
        rects = list(detector(view, upsample))
        if rects:
            break
    else:
        return None, 0
    rect = max(rects, key=lambda r: r.width() * r.height())
    shape = predictor(view, rect)
    points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)
    if angle:
        points = cv2.invertAffineTransform(rotation) @ np.vstack([points.T, np.ones(len(points))])
        points = points.T
    return points / scale, len(rects)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 matrix of the rotation + uniform scale + shift that maps `source` points onto
    `target` points with least squared error (points as complex numbers: target = a source + b)."""
    src = source[:, 0] + 1j * source[:, 1]
    dst = target[:, 0] + 1j * target[:, 1]
    src_centred, dst_centred = src - src.mean(), dst - dst.mean()
    a = np.vdot(src_centred, dst_centred) / np.vdot(src_centred, src_centred)
    b = dst.mean() - a * src.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def warp_to_chip(image: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """Warp so that `landmarks` land on CANONICAL_LANDMARKS of a (size, size) chip."""
    import cv2

    target = CANONICAL_LANDMARKS * size
    matrix = similarity_transform(landmarks, target)
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    if scale < MIN_WARP_SCALE:
        shrink = scale / MIN_WARP_SCALE
        image = cv2.resize(image, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
        matrix = similarity_transform(landmarks * shrink, target)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def align_face(image: np.ndarray, size: int) -> Framed:
    landmarks, faces = detect_landmarks(image)
    if landmarks is None:
        return Framed(None, "no_face", 0)
    return Framed(warp_to_chip(image, landmarks, size), _found(faces), faces)


# ---------------------------------------------------------------------------------------------
# boxes (OpenCV Haar)


@functools.lru_cache(maxsize=1)
def _face_cascade():
    """The frontal-face Haar cascade bundled with OpenCV, loaded once per process."""
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + FACE_CASCADE)
    if cascade.empty():
        # A broken install, not a bad image: fail the job rather than silently skip every crop.
        raise RuntimeError(f"cannot load OpenCV cascade {FACE_CASCADE} from {cv2.data.haarcascades}")
    return cascade


def detect_faces(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    """RGB (or gray) uint8 image -> every frontal face the cascade finds, as (x, y, w, h) pixels."""
    import cv2

    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    scale = min(1.0, DETECT_MAX_SIDE / max(gray.shape))
    if scale < 1.0:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(gray)  # the cascade was trained on normalized contrast
    border = int(FACE_DETECT_BORDER * max(gray.shape))
    gray = cv2.copyMakeBorder(gray, border, border, border, border, cv2.BORDER_CONSTANT, value=128)
    found = _face_cascade().detectMultiScale(
        gray,
        scaleFactor=FACE_SCALE_FACTOR,
        minNeighbors=FACE_MIN_NEIGHBORS,
        minSize=(FACE_MIN_SIZE, FACE_MIN_SIZE),
    )
    # Back to the original image's pixels, clipped to it (a box may reach into the border).
    height, width = image.shape[:2]
    boxes = []
    for x, y, w, h in (tuple(int(value) for value in face) for face in found):
        left, top = max(0, round((x - border) / scale)), max(0, round((y - border) / scale))
        right, bottom = min(width, round((x + w - border) / scale)), min(height, round((y + h - border) / scale))
        if right > left and bottom > top:
            boxes.append((left, top, right - left, bottom - top))
    return boxes


def detect_face(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """The largest Haar face as (x, y, w, h), or None."""
    boxes = detect_faces(image)
    return largest(boxes) if boxes else None


def crop_face(image: np.ndarray, box: tuple[int, int, int, int], margin: float = 0.25) -> np.ndarray:
    """Square crop centred on the face box, its side max(w, h) plus `margin` of it on each side.

    Haar boxes are tight (brows to mouth); the margin brings back hair, ears and chin, which
    carry age. The square is shrunk to fit the image and shifted inside it, so it stays square.
    """
    height, width = image.shape[:2]
    x, y, w, h = box
    side = min(round(max(w, h) * (1 + 2 * margin)), width, height)
    left = round(x + w / 2 - side / 2)
    top = round(y + h / 2 - side / 2)
    left = min(max(left, 0), width - side)
    top = min(max(top, 0), height - side)
    return image[top : top + side, left : left + side]
