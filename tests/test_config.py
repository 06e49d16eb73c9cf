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


def test_a_config_stored_before_the_resources_blocks_and_typed_search_settings_loads():
    """Checkpoints written before issue 16 carry per-command concurrency keys and flat gallery
    search keys; they load, the gallery's search settings land in their typed block."""
    stored = config_to_dict(Config())
    stored["data"].update(decode_concurrency=3, decode_batch_size=32, read_concurrency=4)
    stored["eval"].update(knn_chunk_size=1024, cs_max_threshold=10, embed_batch_size=64, embed_concurrency=2)
    stored["score"].update(batch_size=64, embed_gpus=1.0, search_concurrency=4)
    stored["gallery"] = {
        "split": "train",
        "search": "exact",
        "brute_force_max": 10,
        "candidates": 50,
        "reorder": 0,
        "num_leaves": 0,
        "leaves_to_search": 0,
        "prototypes_per_age": 0,
    }
    cfg = config_from_dict(stored, stored=True)
    assert (cfg.gallery.search.mode, cfg.gallery.search.brute_force_max, cfg.gallery.search.candidates) == (
        "exact",
        10,
        50,
    )
    assert cfg.resources == Config().resources  # job sizing is the job's, not the checkpoint's
    with pytest.raises(ConfigError, match="unknown config key data.decode_concurrency"):
        load_config(None, ["data.decode_concurrency=3"])


def test_gallery_search_is_the_index_settings_type_and_each_stage_has_one_resources_block():
    from agejobs import knn

    cfg = load_config(
        None,
        [
            "gallery.search.mode=approximate",
            "gallery.search.candidates=300",
            "resources.embed.gpus=1",
            "resources.decode.concurrency=8",
        ],
    )
    assert isinstance(cfg.gallery.search, knn.SearchSettings) and cfg.gallery.search.candidates == 300
    assert cfg.gallery.search.resolved_mode(10) == "approximate"
    assert (cfg.resources.embed.gpus, cfg.resources.decode.concurrency, cfg.resources.read.cpus) == (1.0, 8, 0.25)
    with pytest.raises(ConfigError, match="gallery.search.mode"):
        load_config(None, ["gallery.search.mode=fast"])
