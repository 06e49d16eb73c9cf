"""The embedding stage (gallery.Embedder): test-time flip averages a face with its mirror image."""

import numpy as np
import pytest

from agejobs.config import load_config
from agejobs.gallery import Embedder
from agejobs.train import write_initial_checkpoint

# resnet18: an untrained mobilenet_v3_small answers every input alike (measured), hiding the flip.
OVERRIDES = ["model.backbone=resnet18", "model.weights=", "data.image_size=32"]


@pytest.mark.parametrize("method", ["siamese", "regression", "dex"])
def test_test_time_flip_averages_the_face_and_its_mirror_image(tmp_path, method):
    checkpoint = write_initial_checkpoint(
        str(tmp_path / "ck"), load_config(None, OVERRIDES + [f"train.method={method}"])
    )
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    plain, flipping = Embedder(checkpoint), Embedder(checkpoint, test_flip=True)
    assert not plain.test_flip  # the checkpoint's own data.test_flip
    as_is, mirrored = plain({"image": faces}), plain({"image": faces[:, :, ::-1]})
    both = flipping({"image": faces})
    key = "age_embedding" if method == "siamese" else "predicted_age"
    np.testing.assert_allclose(both[key], (as_is[key] + mirrored[key]) / 2, rtol=1e-4, atol=1e-4)
    assert not np.allclose(both[key], as_is[key])  # a mirror image is another input
