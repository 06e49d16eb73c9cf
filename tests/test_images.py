"""decode_image on every kind of bad or unusual input, and the optional Haar face crop."""

import io
import subprocess
import sys
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

from agejobs.images import (
    ImageDecodeError,
    _face_cascade,
    crop_face,
    decode_image,
    detect_face,
    preprocess_encoded,
    resize_square,
)

# Written once at collection so each case is its own test; removed when the interpreter exits.
_CORPUS_DIR = tempfile.TemporaryDirectory(prefix="bad_inputs_")
CORPUS_DIR = Path(_CORPUS_DIR.name)
CORPUS = write_bad_input_corpus(CORPUS_DIR)
UTKFACE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface-part1"


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
    assert corners["top_right"].max() < darkest_allowed and corners["bottom_left"].max() < darkest_allowed, (name, corners)
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


def test_cv2_is_imported_only_when_a_face_is_looked_for():
    code = "import sys, agejobs.images; assert 'cv2' not in sys.modules, 'cv2 imported at start-up'"
    subprocess.run([sys.executable, "-c", code], check=True)


def crop_rectangle(shape: tuple[int, int], box, margin: float = 0.25) -> tuple[int, int, int, int]:
    """Where crop_face cuts, as (left, top, width, height): crop an image of pixel indices."""
    height, width = shape
    indices = np.arange(height * width).reshape(height, width)
    crop = crop_face(indices, box, margin)
    top, left = divmod(int(crop[0, 0]), width)
    return left, top, crop.shape[1], crop.shape[0]


def test_crop_face_is_a_square_with_margin_clamped_into_the_image():
    assert crop_rectangle((400, 400), (100, 100, 40, 40)) == (90, 90, 60, 60)
    assert crop_rectangle((400, 400), (100, 100, 40, 20)) == (90, 80, 60, 60)  # square on max(w, h)
    assert crop_rectangle((400, 400), (0, 0, 40, 40)) == (0, 0, 60, 60)  # shifted in, not cut
    assert crop_rectangle((400, 300), (280, 380, 40, 40)) == (240, 340, 60, 60)
    assert crop_rectangle((100, 80), (0, 0, 80, 100)) == (0, 10, 80, 80)  # larger than the image


def intersection_over_union(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    overlap_w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    overlap_h = max(0, min(ay + ah, by + bh) - max(ay, by))
    overlap = overlap_w * overlap_h
    return overlap / (aw * ah + bw * bh - overlap)


@pytest.fixture(scope="module")
def real_face() -> np.ndarray:
    """The first UTKFace crop (200 x 200) in which detect_face finds a face."""
    if not UTKFACE_DIR.is_dir():
        pytest.skip(f"{UTKFACE_DIR} absent (the shared data is not beside this checkout): no real face to detect")
    for path in sorted(UTKFACE_DIR.iterdir())[:20]:
        face = decode_image(path.read_bytes(), str(path))
        if detect_face(face) is not None:
            return face
    pytest.fail(f"detect_face found no face in the first 20 files of {UTKFACE_DIR}")


def test_face_pasted_into_a_larger_picture_is_found_and_cropped(real_face):
    left, top = 330, 140
    region = (left, top, real_face.shape[1], real_face.shape[0])
    canvas = np.full((600, 600, 3), 128, dtype=np.uint8)
    canvas[top : top + region[3], left : left + region[2]] = real_face

    box = detect_face(canvas)
    assert box is not None
    assert intersection_over_union(box, region) > 0.3, (box, region)

    crop_left, crop_top, side, _ = crop_rectangle(canvas.shape[:2], box)
    crop_centre = np.array([crop_left + side / 2, crop_top + side / 2])
    region_centre = np.array([left + region[2] / 2, top + region[3] / 2])
    assert np.abs(crop_centre - region_centre).max() < 40, (crop_centre, region_centre)
    assert 100 <= side <= 400, side

    data = encode(Image.fromarray(canvas), "PNG")
    cropped = preprocess_encoded(data, 64, source="canvas.png", face_crop=True)
    np.testing.assert_array_equal(cropped, resize_square(crop_face(canvas, box), 64))
    assert not np.array_equal(cropped, preprocess_encoded(data, 64))


def test_without_a_face_the_whole_image_is_kept():
    flat = np.full((300, 200, 3), 90, dtype=np.uint8)
    flat[:50, :50] = 200
    assert detect_face(flat) is None
    data = encode(Image.fromarray(flat), "PNG")
    np.testing.assert_array_equal(
        preprocess_encoded(data, 32, face_crop=True), preprocess_encoded(data, 32)
    )


def test_cascade_is_loaded_once_per_process():
    assert _face_cascade() is _face_cascade()


def test_default_signature_still_works():
    data = io.BytesIO()
    Image.new("RGB", (30, 20), (10, 200, 30)).save(data, format="PNG")
    out = preprocess_encoded(data.getvalue(), 16, "x.png")
    assert out.shape == (16, 16, 3) and out[0, 0].tolist() == [10, 200, 30]
