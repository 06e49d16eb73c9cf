"""Face finding and framing (agejobs/align.py) inside THE preprocessing: Haar boxes, dlib
landmark alignment onto the canonical chip, and what happens to an image without a face."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from bad_inputs import encode
from PIL import Image

from agejobs import align
from agejobs.align import CANONICAL_LANDMARKS, crop_face, detect_face, detect_landmarks
from agejobs.data import DecodeFaces
from agejobs.images import NoFaceError, Preprocessing, decode_image, preprocess_encoded, preprocess_face, resize_square

UTKFACE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface-part1"


def test_face_libraries_are_imported_only_when_a_face_is_looked_for():
    code = "import sys, agejobs.images; assert not {'cv2', 'dlib'} & set(sys.modules), 'imported at start-up'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def real_face() -> np.ndarray:
    """The first UTKFace crop (200 x 200) in which both detectors find a face."""
    if not UTKFACE_DIR.is_dir():
        pytest.skip(f"{UTKFACE_DIR} absent (the shared data is not beside this checkout): no real face to detect")
    for path in sorted(UTKFACE_DIR.iterdir())[:20]:
        face = decode_image(path.read_bytes(), str(path))
        if detect_face(face) is not None and detect_landmarks(face)[0] is not None:
            return face
    pytest.fail(f"no face found in the first 20 files of {UTKFACE_DIR}")


def blank_photo(height: int = 300, width: int = 200) -> np.ndarray:
    flat = np.full((height, width, 3), 90, dtype=np.uint8)
    flat[:50, :50] = 200
    return flat


# ---------------------------------------------------------------------------------------------
# landmarks


def reframe(
    face: np.ndarray, angle: float, scale: float, centre: tuple[float, float], canvas: tuple[int, int]
) -> np.ndarray:
    """The face rotated by `angle` degrees, scaled, centred at `centre` on a noisy (h, w) canvas."""
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(0, 255, (*canvas, 3), dtype=np.uint8), (0, 0), 6)
    matrix = cv2.getRotationMatrix2D((face.shape[1] / 2, face.shape[0] / 2), angle, scale)
    matrix[:, 2] += np.array(centre) - np.array([face.shape[1] / 2, face.shape[0] / 2])
    warped = cv2.warpAffine(face, matrix, (canvas[1], canvas[0]))
    mask = cv2.warpAffine(np.full(face.shape[:2], 255, np.uint8), matrix, (canvas[1], canvas[0])) > 0
    return np.where(mask[:, :, None], warped, background)


def eye_centres(points: np.ndarray) -> np.ndarray:
    """(image-right eye, image-left eye) centres from the 5 dlib points."""
    return np.array([points[0:2].mean(axis=0), points[2:4].mean(axis=0)])


@pytest.mark.parametrize(
    "angle, scale, centre, canvas",
    [(0, 1.0, (300, 200), (400, 640)), (20, 0.8, (180, 260), (480, 360)), (-20, 1.6, (420, 330), (600, 800))],
    ids=["shifted", "rolled-left-smaller", "rolled-right-larger"],
)
def test_alignment_puts_the_eyes_at_the_canonical_positions(real_face, angle, scale, centre, canvas):
    size = 160
    photo = reframe(real_face, angle, scale, centre, canvas)
    face = preprocess_face(encode(Image.fromarray(photo), "PNG"), Preprocessing(size, "landmarks"), "photo.png")
    assert (face.outcome, face.faces, face.image.shape) == ("one_face", 1, (size, size, 3))
    found, _ = detect_landmarks(face.image)  # measured again in the chip itself
    assert found is not None
    error = np.abs(eye_centres(found) - eye_centres(CANONICAL_LANDMARKS * size))
    assert error.max() <= 3.0, (eye_centres(found), eye_centres(CANONICAL_LANDMARKS * size))


def test_the_canonical_chip_is_symmetric_so_a_flipped_chip_is_canonical_too():
    mirrored = CANONICAL_LANDMARKS.copy()
    mirrored[:, 0] = 1 - mirrored[:, 0]
    np.testing.assert_allclose(mirrored[[2, 3, 0, 1, 4]], CANONICAL_LANDMARKS)


def test_similarity_transform_recovers_a_known_rotation_scale_and_shift():
    source = np.array([[10.0, 20.0], [50.0, 22.0], [30.0, 60.0], [5.0, 5.0]])
    theta, scale, shift = np.radians(25), 1.7, np.array([40.0, -12.0])
    rotation = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    matrix = align.similarity_transform(source, source @ rotation.T + shift)
    np.testing.assert_allclose(matrix, np.hstack([rotation, shift[:, None]]), atol=1e-9)


def test_several_faces_use_the_largest_and_say_so(real_face):
    photo = np.full((420, 700, 3), 120, dtype=np.uint8)
    photo[200:400, 20:220] = real_face
    small = cv2.resize(real_face, (150, 150), interpolation=cv2.INTER_AREA)
    photo[20:170, 500:650] = small
    face = preprocess_face(encode(Image.fromarray(photo), "PNG"), Preprocessing(100, "landmarks"))
    assert (face.outcome, face.faces) == ("several_faces", 2)
    # The chip is the large face's, not the small one's (the same person: compare both).
    difference = {}
    for name, at in (("large", (slice(200, 400), slice(20, 220))), ("small", (slice(20, 170), slice(500, 650)))):
        alone = np.full_like(photo, 120)
        alone[at] = photo[at]
        chip = preprocess_face(encode(Image.fromarray(alone), "PNG"), Preprocessing(100, "landmarks")).image
        difference[name] = np.abs(face.image.astype(int) - chip.astype(int)).mean()
    assert difference["large"] < 1 < difference["small"], difference


# ---------------------------------------------------------------------------------------------
# no face: the configured fallback, and it is counted


def test_no_face_falls_back_to_the_whole_image_and_says_so():
    data = encode(Image.fromarray(blank_photo()), "PNG")
    for mode in ("box", "landmarks"):
        face = preprocess_face(data, Preprocessing(32, mode, "whole"), "blank.png")
        assert (face.outcome, face.faces) == ("no_face", 0)
        np.testing.assert_array_equal(face.image, preprocess_encoded(data, 32))


def test_no_face_is_an_error_naming_the_input_when_configured():
    data = encode(Image.fromarray(blank_photo()), "PNG")
    with pytest.raises(NoFaceError, match=r"blank\.png: no face found"):
        preprocess_face(data, Preprocessing(32, "landmarks", "error"), "blank.png")


def face_outcome_count(outcome: str) -> float:
    import prometheus_client

    value = prometheus_client.REGISTRY.get_sample_value("agejobs_face_outcomes_total", {"outcome": outcome})
    return value or 0.0


@pytest.mark.parametrize("no_face", ["whole", "error"])
def test_decode_stage_records_the_outcome_per_row_and_counts_it(real_face, tmp_path, no_face):
    paths = []
    for name, image in (("face.png", real_face), ("blank.png", blank_photo())):
        paths.append(str(tmp_path / name))
        Image.fromarray(image).save(paths[-1])
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    paths.append(str(tmp_path / "broken.jpg"))
    before = {outcome: face_outcome_count(outcome) for outcome in ("one_face", "no_face")}

    out = DecodeFaces(Preprocessing(64, "landmarks", no_face))(
        {"path": np.array(paths), "image_id": np.array(["a", "b", "c"])}
    )

    assert out["face_outcome"].tolist() == ["one_face", "no_face", ""]
    assert out["faces_found"].tolist() == [1, 0, 0]
    assert out["error"][0] == ""
    assert (out["error"][1] == "") == (no_face == "whole")
    assert "no face found" in out["error"][1] or no_face == "whole"
    assert "cannot decode" in out["error"][2]
    assert face_outcome_count("one_face") - before["one_face"] == 1
    assert face_outcome_count("no_face") - before["no_face"] == 1


# ---------------------------------------------------------------------------------------------
# Haar boxes (align: box)


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
    cropped = preprocess_encoded(data, 64, source="canvas.png", align="box")
    np.testing.assert_array_equal(cropped, resize_square(crop_face(canvas, box), 64))
    assert not np.array_equal(cropped, preprocess_encoded(data, 64))


def test_models_are_loaded_once_per_process():
    assert align._face_cascade() is align._face_cascade()
    assert align._dlib_models() is align._dlib_models()


# ---------------------------------------------------------------------------------------------
# the checkpoint keeps the preprocessing


def test_checkpoint_round_trip_keeps_the_preprocessing(tmp_path):
    from agejobs.checkpoint import load_trained_model
    from agejobs.config import load_config
    from agejobs.train import write_initial_checkpoint

    cfg = load_config(
        None,
        [
            "model.backbone=mobilenet_v3_small",
            "model.weights=",
            "data.image_size=48",
            "data.align=landmarks",
            "data.no_face=error",
        ],
    )
    checkpoint = write_initial_checkpoint(str(tmp_path / "ck"), cfg)
    assert Preprocessing.of(load_trained_model(checkpoint).cfg.data) == Preprocessing(48, "landmarks", "error")


@pytest.mark.parametrize("face_crop, align_mode", [(True, "box"), (False, "none")])
def test_checkpoints_from_before_data_align_keep_their_face_crop(face_crop, align_mode):
    from agejobs.config import config_from_dict

    stored = config_from_dict({"data": {"image_size": 64, "face_crop": face_crop}}, stored=True)
    assert Preprocessing.of(stored.data) == Preprocessing(64, align_mode, "whole")
