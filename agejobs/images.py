"""THE image preprocessing, shared by training, evaluation and scoring: bytes -> RGB uint8 face.

    preprocess_face(bytes, Preprocessing) = decode (EXIF-oriented RGB) -> frame the face
                                            (align.py: none | box | landmarks) -> size x size

Pure functions of the bytes, with no Ray and no torch, so every stage calls the same code.
Every bad input raises ImageDecodeError (a ValueError) whose message is "<source>: <reason>".
`decode_or_reason` is the one read -> decode loop that turns it (or a failed read) into an
outcome with its message and reason class, from which data.DecodeFaces, verify.CheckDecodable and
pack.pack_shard write their error rows. What each kind of input becomes:

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

import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agejobs.config import CHOICES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Largest accepted image, checked on the header size before any pixel is decoded: a 9000 x 9000
# PNG of zeros is a 10 KB file that would decode into 81 M pixels (243 MB as RGB).
MAX_IMAGE_PIXELS = 8192 * 8192
# Only these decoders are tried. PIL otherwise probes ~40 formats, some of which accept plain
# text (b"P1 2 2 ..." opens as a PPM), and rarely used parsers are where decoder bugs live.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG covers MPO
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageDecodeError(ValueError):
    """An input that is not a usable image; the message names the input and `reason_class` (one of
    metrics.REJECT_REASONS) says which kind of bad input it is."""

    reason_class = "decode"

    def __init__(self, message: str, reason_class: str | None = None):
        super().__init__(message)
        if reason_class is not None:
            self.reason_class = reason_class


def reason_class_of(error: Exception) -> str:
    """The reason class of what a read-and-decode site caught: the error's own, or from its type."""
    if isinstance(error, ImageDecodeError):
        return error.reason_class
    return "missing" if isinstance(error, FileNotFoundError) else "other"


READ, DECODE = "read", "decode"


@dataclass(frozen=True)
class Outcome:
    """What became of one input of `decode_or_reason`."""

    data: bytes | None = None  # the bytes read; None when reading failed
    value: Any = None  # what `process` returned; None when anything failed
    error: Exception | None = None  # kept whole: a caller may tell NoFaceError from other failures
    stage: str = ""  # READ or DECODE: which step failed; "" when none did

    @property
    def reason(self) -> str:
        """The error row's message, naming the input; "" when it worked."""
        return "" if self.error is None else str(self.error)

    @property
    def reason_class(self) -> str:
        return "" if self.error is None else reason_class_of(self.error)


def decode_or_reason(
    sources: Sequence[str],
    read: Callable[[str], bytes] | Sequence[bytes],
    process: Callable[[bytes, str], Any] | None = None,
) -> Iterator[Outcome]:
    """One Outcome per source, in order: its bytes (`read(source)`, or `read[i]` when the bytes are
    at hand, as in a pack) put through `process(bytes, source)` (None: only read). A bad input is
    an outcome with its error, never an exception: an unreadable one (OSError, StorageError) or
    one that does not decode (ImageDecodeError). A generator, so a batch's bytes are not all held."""
    for index, source in enumerate(sources):
        try:
            data = read(source) if callable(read) else read[index]
        except (ImageDecodeError, OSError) as error:
            yield Outcome(error=error, stage=READ)
            continue
        try:
            value = None if process is None else process(data, source)
        except (ImageDecodeError, OSError) as error:
            yield Outcome(data, error=error, stage=DECODE)
            continue
        yield Outcome(data, value)


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
        raise ImageDecodeError(f"{source}: image too large: {error}", "too_large") from error
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
                f"{source}: image too large: {width} x {height} pixels exceeds MAX_IMAGE_PIXELS ({MAX_IMAGE_PIXELS})",
                "too_large",
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


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a face crop to (size, size, 3) uint8; the whole crop is kept, aspect is not."""
    from PIL import Image

    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.BILINEAR))


NO_FACE_FALLBACKS = CHOICES["data.no_face"]


class NoFaceError(ImageDecodeError):
    """No face was found and the preprocessing says such an image is an error (data.no_face)."""

    reason_class = "no_face"


@dataclass(frozen=True)
class Preprocessing:
    """What turns bytes into a model's input face. Set by `data.*` and stored in every checkpoint
    with its config, so a gallery build or a scoring run preprocesses as the model's training did."""

    size: int
    align: str = "none"  # align.ALIGN_MODES
    no_face: str = "whole"  # NO_FACE_FALLBACKS: the whole image stands in for the face, or an error row

    @classmethod
    def of(cls, data_config) -> Preprocessing:
        """From a config.DataConfig (or anything with image_size, align, no_face)."""
        return cls(data_config.image_size, data_config.align, data_config.no_face)


@dataclass(frozen=True)
class Face:
    image: np.ndarray  # (size, size, 3) uint8
    outcome: str  # align.OUTCOMES
    faces: int  # faces found (0 when not searched)


def preprocess_face(data: bytes, preprocessing: Preprocessing, source: str = "<bytes>") -> Face:
    """THE preprocessing: decode -> RGB -> frame the face (data.align) -> size x size (training's
    flips come later, on the batch: data.random_flip).

    When no face is found the whole image is used (data.no_face: whole) -- most archives are
    pre-cropped faces, and a miss (profile, occlusion, dim light) there is still a usable face --
    or the image becomes an error row (data.no_face: error). Either way `outcome` says so.
    """
    from agejobs.align import frame_face

    image = decode_image(data, source)
    framed = frame_face(image, preprocessing.align, preprocessing.size)
    if framed.image is None and preprocessing.no_face == "error":
        raise NoFaceError(f"{source}: no face found (data.align={preprocessing.align}, data.no_face=error)")
    face = image if framed.image is None else framed.image
    return Face(resize_square(face, preprocessing.size), framed.outcome, framed.faces)


def preprocess_encoded(
    data: bytes, size: int, source: str = "<bytes>", align: str = "none", no_face: str = "whole"
) -> np.ndarray:
    """preprocess_face's image alone."""
    return preprocess_face(data, Preprocessing(size, align, no_face), source).image
