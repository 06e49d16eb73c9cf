import pytest

from agejobs.config import Config, ConfigError, config_from_dict, config_to_dict, dump_config, load_config

CONFIGS = ["configs/paper.yaml", "configs/demo.yaml", "configs/utkface.yaml"]


@pytest.mark.parametrize("path", CONFIGS)
def test_committed_configs_load_and_round_trip(path, tmp_path):
    cfg = load_config(path)
    dump_config(cfg, str(tmp_path / "resolved.yaml"))
    assert load_config(str(tmp_path / "resolved.yaml")) == cfg


def test_paper_config_holds_the_papers_settings():
    cfg = load_config("configs/paper.yaml")
    assert (cfg.model.backbone, cfg.data.image_size, cfg.train.batch_size) == ("inception_v3", 227, 128)
    assert (cfg.model.age_dim, cfg.model.gender_dim, cfg.model.dropout) == (70, 10, 0.5)
    assert (cfg.optim.name, cfg.loss.age_tolerance, cfg.loss.q, cfg.eval.knn_m) == ("adadelta", 3, 100.0, 20)
    assert cfg.loss.gender_weight > 0


def test_dotted_overrides_apply_with_types():
    cfg = load_config("configs/demo.yaml", ["train.batch_size=32", "loss.q=50", "model.backbone=mobilenet_v2"])
    assert cfg.train.batch_size == 32 and cfg.loss.q == 50.0 and isinstance(cfg.loss.q, float)
    assert cfg.model.backbone == "mobilenet_v2"
    assert load_config(None, ["eval.baselines=[mean]"]).eval.baselines == ["mean"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batchsize=3", "unknown config key train.batchsize"),
        ("nope.x=1", "unknown config key nope"),
        ("train.batch_size=abc", "train.batch_size: expected int, got str"),
        ("train.batch_size=1.5", "train.batch_size: expected int, got float"),
        ("train.use_gpu=1", "train.use_gpu: expected bool, got int"),
        ("loss.q=true", "loss.q: expected float, got bool"),
        ("model.backbone=vgg", "model.backbone: 'vgg' is not one of"),
        ("train.batch_size=63", "not divisible by train.num_workers"),
        ("eval.baselines=[mean, knn]", "unknown baseline 'knn'"),
        ("train", "not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config("configs/demo.yaml", [override])


def test_unknown_key_in_file_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  backbone: resnet18\n  dropuot: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key model.dropuot"):
        load_config(str(path))


def test_missing_file_is_an_error():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/none.yaml")


def test_defaults_are_the_paper():
    assert Config().model.backbone == "inception_v3" and Config().loss.age_tolerance == 3


def test_a_stored_config_with_a_retired_key_loads_but_a_config_file_with_it_is_an_error(tmp_path):
    stored = config_to_dict(Config())
    stored["data"]["manifest_blocks"] = 16  # written by checkpoints before the epoch shuffle
    assert config_from_dict(stored, stored=True) == Config()
    with pytest.raises(ConfigError, match="unknown config key data.manifest_blocks"):
        config_from_dict(stored)
    assert "manifest_blocks" in stored["data"]  # the caller's dict is left as it was
