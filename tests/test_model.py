import os
from pathlib import Path

import pytest
import torch

from agejobs.model import WeightsError, build_model

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2-b0353104.pth"


@pytest.mark.parametrize("backbone, size", [("resnet18", 64), ("mobilenet_v2", 64), ("inception_v3", 96)])
def test_heads_have_the_configured_widths(backbone, size):
    torch.manual_seed(0)
    model = build_model(backbone, "siamese", age_dim=70, gender_dim=10, dropout=0.5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out["age"].shape == (2, 70) and out["gender"].shape == (2, 10)


def test_baseline_heads():
    regression = build_model("resnet18", "regression").eval()
    dex = build_model("resnet18", "dex", max_age=100).eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        assert regression(x)["age"].shape == (2, 1) and regression(x)["gender"].shape == (2, 2)
        assert dex(x)["age"].shape == (2, 101)


def test_inception_paper_input_size_runs():
    model = build_model("inception_v3", dropout=0.5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 227, 227))["age"].shape == (1, 70)


@pytest.mark.skipif(
    not SHARED_WEIGHTS.exists(), reason="shared ImageNet MobileNetV2 weights not present beside the checkout"
)
def test_shared_mobilenet_weights_load_strictly():
    model = build_model("mobilenet_v2", weights=str(SHARED_WEIGHTS))
    state = torch.load(SHARED_WEIGHTS, weights_only=True)
    loaded = model.backbone.state_dict()
    assert torch.equal(loaded["features.0.0.weight"], state["features.0.0.weight"])


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match=r"weights file .*nothing\.pth does not exist"):
        build_model("resnet18", weights=str(tmp_path / "nothing.pth"))


def test_mismatched_weights_name_the_file_and_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(build_model("resnet18").backbone.state_dict(), path)
    with pytest.raises(WeightsError, match=r"resnet\.pth does not match backbone mobilenet_v2: \d+ missing keys"):
        build_model("mobilenet_v2", weights=str(path))


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(os.urandom(64))
    with pytest.raises(WeightsError, match="not a torch state dict"):
        build_model("resnet18", weights=str(path))


# Randomly initialised Inception V3 in eval mode (no running statistics yet) has outputs ~1e5,
# where another summation order alone moves the fourth digit.
@pytest.mark.parametrize("backbone, size, rtol", [("mobilenet_v2", 64, 1e-4), ("inception_v3", 96, 1e-2)])
def test_channels_last_changes_the_layout_not_the_outputs(backbone, size, rtol):
    """model.channels_last (the default) is a speed choice: same weights, same embeddings."""
    from agejobs.config import load_config
    from agejobs.data import to_model_input
    from agejobs.model import build_model_from_config

    images = torch.randint(0, 256, (3, size, size, 3), dtype=torch.uint8)
    outputs = {}
    for channels_last in (True, False):
        cfg = load_config(None, [f"model.backbone={backbone}", f"model.channels_last={str(channels_last).lower()}"])
        torch.manual_seed(0)
        model = build_model_from_config(cfg.model, "siamese").eval()
        conv = next(module for module in model.modules() if isinstance(module, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        with torch.no_grad():
            outputs[channels_last] = model(to_model_input(images, channels_last=channels_last))
    for head in ("age", "gender"):
        torch.testing.assert_close(outputs[True][head], outputs[False][head], rtol=rtol, atol=1e-4)
