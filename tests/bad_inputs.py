"""A deterministic corpus of the bad and unusual files a face archive contains (a test helper).

Every picture is the same upright scene, so one check covers all the cases that decode: a dark
background, a bright block in the TOP-LEFT corner (shows orientation) and, in colour cases, a red
block in the bottom-right (shows channel order). EXIF-rotated files store the pixels turned the
way a camera would, so only a decoder that applies the orientation tag gets the scene upright.
"""

from __future__ import annotations

import io
import pathlib

import numpy as np
from PIL import Image

HEIGHT, WIDTH = 48, 64  # not square: a 90-degree EXIF rotation shows up in the shape
BLOCK = 16
BACKGROUND, BRIGHT = 40, 250
RED = (200, 30, 30)
MID_GRAY_16 = 32768  # a 16-bit mid gray: 128 after >> 8, 255 if clipped by convert("RGB")


def upright_scene(color: bool = True) -> np.ndarray:
    """The scene every decodable case shows: RGB uint8 (HEIGHT, WIDTH, 3)."""
    scene = np.full((HEIGHT, WIDTH, 3), BACKGROUND, dtype=np.uint8)
    scene[:BLOCK, :BLOCK] = BRIGHT
    if color:
        scene[-BLOCK:, -BLOCK:] = RED
    return scene


def encode(image: Image.Image, format: str, **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **save_kwargs)
    return buffer.getvalue()


def noisy_jpeg_and_png() -> tuple[bytes, bytes]:
    """Incompressible pictures, so a cut at 60% lands in the pixel data, not in the header."""
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    return encode(image, "JPEG", quality=90), encode(image, "PNG")


def exif_rotated_jpeg(orientation: int) -> bytes:
    """The scene stored turned as a camera held that way stores it, tagged with `orientation`."""
    # The inverse of the turn a viewer applies for the tag (PIL rotates counter-clockwise).
    stored_turn = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    stored = Image.fromarray(upright_scene()).transpose(stored_turn[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation  # the Orientation tag
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def write_bad_input_corpus(directory: pathlib.Path) -> dict[str, tuple[str, str]]:
    """Write one file per case into `directory`; return {file_name: (expected, detail)}.

    expected is "ok" or "error"; detail is the substring the error message must contain, or
    for "ok" a short description of what the file is.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    scene = upright_scene()
    gray_scene = upright_scene(color=False)[:, :, 0]
    good_jpeg = encode(Image.fromarray(scene), "JPEG", quality=95)
    noisy_jpeg, noisy_png = noisy_jpeg_and_png()
    garbage = bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8))

    gray16 = np.full((HEIGHT, WIDTH), MID_GRAY_16, dtype=np.uint16)
    gray16[:BLOCK, :BLOCK] = 65535
    alpha = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)  # background fully transparent
    alpha[:BLOCK, :BLOCK] = 255
    rgba = np.dstack([scene, alpha])
    palette = Image.fromarray(scene).quantize(colors=4)
    palette.info["transparency"] = int(np.asarray(palette)[HEIGHT // 2, WIDTH // 2])  # background
    frames = [Image.fromarray(scene), Image.fromarray(scene[::-1, ::-1].copy())]

    cases: dict[str, tuple[str, str, bytes]] = {
        "good.jpg": ("ok", "control: a plain RGB JPEG", good_jpeg),
        "corrupt.jpg": ("error", "cannot decode image", good_jpeg[:20] + garbage),
        "truncated.jpg": ("error", "truncated image", noisy_jpeg[: len(noisy_jpeg) * 6 // 10]),
        "truncated_png.png": ("error", "truncated image", noisy_png[: len(noisy_png) * 6 // 10]),
        "empty.jpg": ("error", "empty file", b""),
        "notes.jpg": ("error", "cannot decode image (unrecognised format", b"age,gender\n31,0\n"),
        "error_page.jpg": (
            "error",
            "cannot decode image (unrecognised format",
            b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body>Access Denied</body></html>\n",
        ),
        "ppm_lookalike.jpg": ("error", "cannot decode image (unrecognised format", b"P1\n2 2\n0 1 1 0\n"),
        # 81 M pixels of zeros in ~10 KB: rejected from the header, well before any decoding.
        "bomb.png": ("error", "image too large: 9000 x 9000 pixels", encode(Image.new("1", (9000, 9000)), "PNG")),
        "float.tiff": (
            "error",
            "unsupported pixel format (mode F",
            encode(Image.fromarray(gray_scene.astype(np.float32)), "TIFF"),
        ),
        "cmyk.jpg": (
            "ok",
            "CMYK JPEG (PIL writes it Adobe-inverted)",
            encode(Image.fromarray(scene).convert("CMYK"), "JPEG", quality=95),
        ),
        "gray16.png": ("ok", "16-bit grayscale PNG, mid-gray background", encode(Image.fromarray(gray16), "PNG")),
        "gray8.png": ("ok", "8-bit grayscale (L)", encode(Image.fromarray(gray_scene), "PNG")),
        "gray_alpha.png": (
            "ok",
            "grayscale + alpha (LA)",
            encode(Image.fromarray(np.dstack([gray_scene, alpha]), "LA"), "PNG"),
        ),
        "rgba.png": ("ok", "RGBA, background fully transparent", encode(Image.fromarray(rgba), "PNG")),
        "palette_transparent.png": ("ok", "palette with a transparent index", encode(palette, "PNG")),
        "multiframe.gif": (
            "ok",
            "2-frame GIF, 2nd frame turned 180",
            encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        ),
        "exif3.jpg": ("ok", "stored turned 180, EXIF orientation 3", exif_rotated_jpeg(3)),
        "exif6.jpg": ("ok", "stored turned 90 counter-clockwise, EXIF orientation 6", exif_rotated_jpeg(6)),
        "exif8.jpg": ("ok", "stored turned 90 clockwise, EXIF orientation 8", exif_rotated_jpeg(8)),
    }
    for name, (_, _, data) in cases.items():
        (directory / name).write_bytes(data)
    return {name: (expected, detail) for name, (expected, detail, _) in cases.items()}
