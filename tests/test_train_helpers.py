import math

import pytest

from agejobs.config import load_config
from agejobs.train import TrainState, budget_progress, make_optimizer, scheduled_lr


def test_budget_progress_takes_the_largest_fraction():
    cfg = load_config(None, ["train.epochs=10", "train.max_steps=50", "train.max_time_s=100"])
    state = TrainState(step=20)
    assert budget_progress(state, elapsed_s=10.0, cfg=cfg, steps_per_epoch=10) == pytest.approx(0.4)  # steps
    assert budget_progress(state, elapsed_s=80.0, cfg=cfg, steps_per_epoch=10) == pytest.approx(0.8)  # time
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
