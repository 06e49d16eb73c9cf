import math

import pytest

from agejobs.config import load_config
from agejobs.progress import format_epoch
from agejobs.train import TrainState, budget_progress, budget_steps, make_optimizer, scheduled_lr, steps_per_epoch


def test_budget_progress_takes_the_largest_fraction():
    cfg = load_config(None, ["train.epochs=10", "train.max_steps=50", "train.max_time_s=100"])
    state = TrainState(step=20)
    assert budget_progress(state, elapsed_s=10.0, cfg=cfg, epoch_length=10) == pytest.approx(0.4)  # steps
    assert budget_progress(state, elapsed_s=80.0, cfg=cfg, epoch_length=10) == pytest.approx(0.8)  # time
    assert budget_progress(TrainState(step=500), 0.0, cfg, 10) == 1.0


def test_cosine_schedule():
    assert scheduled_lr(1.0, 0.0, "cosine") == pytest.approx(1.0)
    assert scheduled_lr(1.0, 0.5, "cosine") == pytest.approx(0.5)
    assert scheduled_lr(1.0, 1.0, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert scheduled_lr(0.3, 0.7, "constant") == 0.3
    assert math.isclose(scheduled_lr(2.0, 0.25, "cosine"), 2.0 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_optimizers_by_name():
    import torch

    params = [torch.nn.Parameter(torch.zeros(2))]
    for name, cls in (("adadelta", torch.optim.Adadelta), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)):
        assert isinstance(make_optimizer(params, load_config(None, [f"optim.name={name}"]).optim), cls)


def test_budget_in_steps_follows_the_equal_split_and_drop_last():
    cfg = load_config(None, ["train.batch_size=64", "train.num_workers=2", "train.epochs=4"])
    # 7,854 faces over 2 workers: 3,927 each, 122 full batches of 32 (the last 23 faces dropped)
    assert steps_per_epoch(7854, cfg) == 122
    assert budget_steps(7854, cfg) == 488
    assert (
        budget_steps(7854, load_config(None, ["train.batch_size=64", "train.epochs=4", "train.max_steps=300"])) == 300
    )
    assert steps_per_epoch(10, cfg) == 1  # never 0: a tiny split still trains


def test_epoch_line_is_one_readable_line():
    line = format_epoch(
        "dex",
        {"epoch": 2, "epoch_steps": 122, "age_loss": 3.14159, "gender_loss": 0.5, "images_per_s": 141.7, "step": 244},
        epochs=5,
    )
    assert line == "[dex] epoch 2/5: 122 steps, age_loss 3.142, gender_loss 0.5, 142 images/s"
