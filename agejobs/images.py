"""THE image preprocessing, shared by training, evaluation and scoring: bytes -> RGB uint8 face.

    preprocess_encoded(bytes, size) = decode (EXIF-oriented RGB) [-> face crop] -> resize to
                                      size x size

Pure functions of the bytes, with no Ray and no torch, so every stage calls the same code.
Every bad input raises ImageDecodeError (a ValueError) whose message is "<source>: <reason>";
the Ray Data stage turns it into an error row. What each kind of input becomes:

| input                                          | outcome                                          |
|------------------------------------------------|--------------------------------------------------|
| zero bytes                                     | error "empty file"                               |
| text, HTML error page, unknown/unlisted format | error "cannot decode image (unrecognised format, |
|                                                |   starts with b'...')"                           |
| garbage after a JPEG header, broken structure  | error "cannot decode image (...)"                |
| JPEG/PNG cut off in the pixel data             | error "truncated image (...)"; never gray-filled |
| JPEG missing only its end marker               | decodes if every scanline is there, else as above|
| more than MAX_IMAGE_PIXELS (read from header)  | error "image too large: W x H pixels exceeds     |
|                                                |   MAX_IMAGE_PIXELS (N)", before any pixel decode |
| float pixels (mode F), unconvertible modes     | error "unsupported pixel format (mode ...)"      |
| RGB, 8-bit gray (L), 1-bit, palette, YCbCr     | RGB (gray replicated to 3 channels)              |
| 16-bit gray (I;16, I;16B, I;16L, I)            | RGB of value >> 8 (PIL's convert clips >255 to   |
|                                                |   white); mode I is read as 16-bit, clipped      |
| CMYK JPEG, Adobe-inverted CMYK too             | RGB by PIL's plain formula (no ICC profile)      |
| RGBA, LA, palette + transparency               | alpha dropped, stored colours kept (see below)   |
| EXIF orientation 2-8                           | pixels rotated/flipped upright                   |
| multi-frame GIF/TIFF/MPO                       | first frame (the primary image)                  |
| valid JPEG with garbled scan data              | decodes to garbled pixels: libjpeg only warns,   |
|                                                |   PIL cannot tell (not detectable here)          |

Alpha is dropped, not composited: faces in an archive with alpha are exports whose alpha is
opaque or meaningless (a buggy all-zero alpha is common), and compositing onto any background
would replace the photographed face with that background.
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Largest accepted image, checked on the header size before any pixel is decoded: a 9000 x 9000
# PNG of zeros is a 10 KB file that would decode into 81 M pixels (243 MB as RGB).
MAX_IMAGE_PIXELS = 8192 * 8192
# Only these decoders are tried. PIL otherwise probes ~40 formats, some of which accept plain
# text (b"P1 2 2 ..." opens as a PPM), and rarely used parsers are where decoder bugs live.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG covers MPO
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")

# Haar face detection. Faces smaller than FACE_MIN_SIZE px (after the downscale to
# FACE_DETECT_MAX_SIDE) are ignored: the archives hold portraits, not crowds.
FACE_CASCADE = "haarcascade_frontalface_default.xml"
FACE_SCALE_FACTOR = 1.1
FACE_MIN_NEIGHBORS = 5
FACE_MIN_SIZE = 40
FACE_DETECT_MAX_SIDE = 640  # detection cost grows with pixels; a face needs no more
# The cascade's 24 px window needs context around a face: pre-cropped faces fill the frame, and
# without this gray border (a fraction of the longer side) only 25 of the first 50 UTKFace crops
# were detected, 48 with it.
FACE_DETECT_BORDER = 0.25


class ImageDecodeError(ValueError):
    """An input that is not a usable image; the message names the input."""


def decode_image(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Encoded bytes -> RGB uint8 (H, W, 3), EXIF orientation applied; see the table above."""
    from PIL import Image, ImageFile

    if not data:
        raise ImageDecodeError(f"{source}: empty file")
    # A process-wide PIL switch that any imported library may flip to True; then truncated files
    # load with the missing part filled gray and pass as faces. Nothing here ever wants it True.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        # Scoped filter: PIL's bomb warning becomes an error; other per-file warnings (corrupt
        # EXIF, odd palettes) are noise over millions of files and must not leak to the caller.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(data, source)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(f"{source}: image too large: {error}") from error
    except Image.UnidentifiedImageError as error:
        # PIL's own message only names a BytesIO address; the first bytes say what it was.
        raise ImageDecodeError(
            f"{source}: cannot decode image (unrecognised format, starts with {data[:24]!r})"
        ) from error
    except Exception as error:  # PIL parsers raise OSError, SyntaxError, struct.error, IndexError...
        raise ImageDecodeError(f"{source}: cannot decode image ({str(error) or type(error).__name__})") from error


def _decode(data: bytes, source: str) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
        width, height = image.size  # from the header: no pixel decoded yet
        if width * height > MAX_IMAGE_PIXELS:
            raise ImageDecodeError(
                f"{source}: image too large: {width} x {height} pixels exceeds MAX_IMAGE_PIXELS ({MAX_IMAGE_PIXELS})"
            )
        try:
            image.load()  # the full decode, so truncation raises here and not later
        except OSError as error:
            # Only here does "truncated" mean cut-off pixel data; in the header PIL says it too
            # when garbage makes a segment length overrun the file.
            if "truncated" in str(error).lower():
                raise ImageDecodeError(f"{source}: truncated image ({error})") from error
            raise
        return _to_rgb(ImageOps.exif_transpose(image), source)


def _to_rgb(image, source: str) -> np.ndarray:
    """A loaded PIL image of any mode -> RGB uint8 (H, W, 3)."""
    if image.mode in SIXTEEN_BIT_MODES:
        # PIL's convert("RGB") clips 16-bit values to 255, so every mid-gray turns white.
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        gray = (values >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        # Float pixels have no agreed range (0..1? 0..255? HDR?); guessing would be silent damage.
        raise ImageDecodeError(f"{source}: unsupported pixel format (mode F, range unknown)")
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as error:  # e.g. "La": PIL has no conversion to RGB
        raise ImageDecodeError(f"{source}: unsupported pixel format (mode {image.mode}: {error})") from error


@functools.lru_cache(maxsize=1)
def _face_cascade():
    """The frontal-face Haar cascade bundled with OpenCV, loaded once per process."""
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + FACE_CASCADE)
    if cascade.empty():
        # A broken install, not a bad image: fail the job rather than silently skip every crop.
        raise RuntimeError(f"cannot load OpenCV cascade {FACE_CASCADE} from {cv2.data.haarcascades}")
    return cascade


def detect_face(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """RGB (or gray) uint8 image -> the largest frontal face as (x, y, w, h) in pixels, or None."""
    import cv2

    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    scale = min(1.0, FACE_DETECT_MAX_SIDE / max(gray.shape))
    if scale < 1.0:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(gray)  # the cascade was trained on normalized contrast
    border = int(FACE_DETECT_BORDER * max(gray.shape))
    gray = cv2.copyMakeBorder(gray, border, border, border, border, cv2.BORDER_CONSTANT, value=128)
    faces = _face_cascade().detectMultiScale(
        gray, scaleFactor=FACE_SCALE_FACTOR, minNeighbors=FACE_MIN_NEIGHBORS,
        minSize=(FACE_MIN_SIZE, FACE_MIN_SIZE),
    )
    if len(faces) == 0:
        return None
    x, y, w, h = (int(value) for value in max(faces, key=lambda face: face[2] * face[3]))
    # Back to the original image's pixels, clipped to it (a box may reach into the border).
    height, width = image.shape[:2]
    left, top = max(0, round((x - border) / scale)), max(0, round((y - border) / scale))
    right = min(width, round((x + w - border) / scale))
    bottom = min(height, round((y + h - border) / scale))
    if right <= left or bottom <= top:
        return None
    return left, top, right - left, bottom - top


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


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a face crop to (size, size, 3) uint8; the whole crop is kept, aspect is not."""
    from PIL import Image

    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.BILINEAR))


def preprocess_encoded(data: bytes, size: int, source: str = "<bytes>", face_crop: bool = False) -> np.ndarray:
    """The one preprocessing path: decode -> RGB [-> face crop] -> resize (training's flips
    come later, on the batch: data.random_flip).

    With face_crop, an image where no face is found is kept whole rather than dropped: the
    archives are mostly pre-cropped faces, and a miss (profile, occlusion, dim light) there is
    still a usable face.
    """
    image = decode_image(data, source)
    if face_crop:
        box = detect_face(image)
        if box is not None:
            image = crop_face(image, box)
    return resize_square(image, size)
