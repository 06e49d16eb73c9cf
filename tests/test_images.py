"""decode_image on every kind of bad or unusual input (face finding: test_align.py)."""

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import (
    BACKGROUND,
    BLOCK,
    HEIGHT,
    MID_GRAY_16,
    WIDTH,
    encode,
    write_bad_input_corpus,
)
from PIL import Image, ImageFile

from agejobs.images import ImageDecodeError, decode_image, preprocess_encoded

# Written once at collection so each case is its own test; removed when the interpreter exits.
_CORPUS_DIR = tempfile.TemporaryDirectory(prefix="bad_inputs_")
CORPUS_DIR = Path(_CORPUS_DIR.name)
CORPUS = write_bad_input_corpus(CORPUS_DIR)


def corner_means(image: np.ndarray) -> dict[str, np.ndarray]:
    """Mean RGB of the BLOCK x BLOCK square in each corner."""
    return {
        "top_left": image[:BLOCK, :BLOCK].reshape(-1, 3).mean(axis=0),
        "top_right": image[:BLOCK, -BLOCK:].reshape(-1, 3).mean(axis=0),
        "bottom_left": image[-BLOCK:, :BLOCK].reshape(-1, 3).mean(axis=0),
        "bottom_right": image[-BLOCK:, -BLOCK:].reshape(-1, 3).mean(axis=0),
    }


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_case_decodes_upright_rgb_or_names_the_reason(name):
    expected, detail = CORPUS[name]
    path = CORPUS_DIR / name
    if expected == "error":
        with pytest.raises(ImageDecodeError) as caught:
            decode_image(path.read_bytes(), str(path))
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and detail in message, message
        assert len(message) < 200 + len(str(path)), message  # short enough for an error column
        return

    image = decode_image(path.read_bytes(), str(path))
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8, (name, detail)
    corners = corner_means(image)
    # The bright block is top-left only if EXIF orientation (and frame choice) were applied.
    assert corners["top_left"].min() > 200, (name, corners)
    darkest_allowed = corners["top_left"].min() - 100
    assert corners["top_right"].max() < darkest_allowed and corners["bottom_left"].max() < darkest_allowed, (
        name,
        corners,
    )
    if name == "gray16.png":
        # 16-bit mid gray is ~128, not the 255 that PIL's convert("RGB") clips it to.
        assert np.abs(image[HEIGHT // 2, WIDTH // 2].astype(int) - MID_GRAY_16 // 256).max() <= 1, image[24, 32]
        assert corners["top_left"].min() >= 254
    elif name.startswith("gray"):
        assert np.abs(corners["bottom_right"] - BACKGROUND).max() <= 2, (name, corners)
    else:
        red, green, blue = corners["bottom_right"]  # the red block: channel order is RGB
        assert red > 150 and green < 80 and blue < 80, (name, corners)
    if name in ("rgba.png", "gray_alpha.png"):
        # Alpha dropped, not composited: the fully transparent background keeps its stored gray.
        assert np.abs(image[HEIGHT // 2, WIDTH // 2].astype(int) - BACKGROUND).max() <= 2, image[24, 32]


def test_truncated_files_stay_errors_when_pil_is_told_to_fill_them(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some library might
    for name in ("truncated.jpg", "truncated_png.png"):
        with pytest.raises(ImageDecodeError, match="truncated image"):
            decode_image((CORPUS_DIR / name).read_bytes(), name)


def test_bomb_is_rejected_from_the_header_before_any_pixel_is_decoded():
    header_and_half_the_pixels = (CORPUS_DIR / "bomb.png").read_bytes()[:200]
    with pytest.raises(ImageDecodeError, match=r"bomb\.png: image too large: 9000 x 9000 pixels exceeds"):
        decode_image(header_and_half_the_pixels, "bomb.png")


def test_pil_bomb_warning_becomes_an_error_and_no_warning_leaks():
    filters_before = list(warnings.filters)
    over_pil_limit = encode(Image.new("1", (10000, 10000)), "PNG")  # PIL warns above ~89 M pixels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageDecodeError, match="huge.png: image too large"):
            decode_image(over_pil_limit, "huge.png")
        for name in CORPUS:
            try:
                decode_image((CORPUS_DIR / name).read_bytes(), name)
            except ImageDecodeError:
                pass
    assert caught == []
    assert warnings.filters == filters_before


def test_default_signature_still_works():
    data = io.BytesIO()
    Image.new("RGB", (30, 20), (10, 200, 30)).save(data, format="PNG")
    out = preprocess_encoded(data.getvalue(), 16, "x.png")
    assert out.shape == (16, 16, 3) and out[0, 0].tolist() == [10, 200, 30]
