"""The shared preprocessing and the Ray Data decode stage, called directly (no cluster)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from agejobs.data import DecodeFaces, random_flip, to_model_input
from agejobs.images import IMAGENET_MEAN, decode_image, preprocess_encoded


def jpeg_bytes(array: np.ndarray, **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", **save_kwargs)
    return buffer.getvalue()


def test_preprocess_resizes():
    image = np.zeros((20, 40, 3), dtype=np.uint8)
    image[:, :20] = 255  # left half white
    plain = preprocess_encoded(jpeg_bytes(image, quality=100), 16)
    assert plain.shape == (16, 16, 3) and plain.dtype == np.uint8
    assert plain[:, :4].mean() > 200 and plain[:, -4:].mean() < 50


def test_random_flip_mirrors_about_half_the_faces_from_the_torch_rng():
    images = torch.arange(64 * 2 * 3 * 3, dtype=torch.int32).reshape(64, 2, 3, 3).to(torch.uint8)
    torch.manual_seed(0)
    flipped = random_flip(images)
    mirrored = [bool(torch.equal(out, image.flip(1))) for out, image in zip(flipped, images)]
    unchanged = [bool(torch.equal(out, image)) for out, image in zip(flipped, images)]
    assert all(m != u for m, u in zip(mirrored, unchanged))  # each face: exactly one of the two
    assert 16 < sum(mirrored) < 48
    torch.manual_seed(0)
    assert torch.equal(random_flip(images), flipped)  # one seed, one augmentation


def test_grayscale_and_alpha_become_rgb():
    gray = io.BytesIO()
    Image.new("L", (10, 10), 128).save(gray, format="PNG")
    rgba = io.BytesIO()
    Image.new("RGBA", (10, 10), (10, 20, 30, 0)).save(rgba, format="PNG")
    assert decode_image(gray.getvalue()).shape == (10, 10, 3)
    assert decode_image(rgba.getvalue())[0, 0].tolist() == [10, 20, 30]


def test_to_model_input_normalizes_channels_first():
    images = torch.full((2, 4, 4, 3), 255, dtype=torch.uint8)
    batch = to_model_input(images)
    assert batch.shape == (2, 3, 4, 4)
    assert batch[0, 0, 0, 0].item() == pytest.approx((1.0 - IMAGENET_MEAN[0]) / 0.229, rel=1e-5)


def test_decode_stage_turns_bad_files_into_error_rows(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg_bytes(np.full((30, 30, 3), 90, dtype=np.uint8)))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:40])
    missing = tmp_path / "missing.jpg"
    paths = [str(p) for p in (good, empty, text, truncated, missing)]
    batch = {
        "path": np.array(paths, dtype=object),
        "image_id": np.array(["a", "b", "c", "d", "e"]),
        "age": np.array([1, 2, 3, 4, 5]),
        "gender": np.array([0, 1, 0, 1, 0]),
    }
    out = DecodeFaces(8)(batch)
    assert out["image"].shape == (5, 8, 8, 3)
    assert out["error"][0] == ""
    assert "empty file" in out["error"][1] and str(empty) in out["error"][1]
    assert "cannot decode" in out["error"][2]
    assert out["error"][3] != "" and out["error"][4] != ""  # truncated, missing: a reason each
    assert out["image_id"].tolist() == ["a", "b", "c", "d", "e"]  # every input accounted for
