"""Storage against a real S3-compatible endpoint (moto's server on 127.0.0.1, started by the
fixtures): round trips, listings, permanent errors that name the URI, retried transient errors,
images and shards read from s3://, outputs and checkpoints written there."""

import io
import os

import pyarrow.parquet as pq
import pytest
import torch
from s3_proxy import FlakyProxy

from agejobs import pack, storage
from agejobs.checkpoint import CHECKPOINT_FILE, read_checkpoint
from agejobs.config import StorageConfig, config_to_dict, config_to_yaml, load_config
from agejobs.datasets.manifest import SplitSpec, read_manifest, split_protocol_of
from agejobs.datasets.synthetic import SynthSpec, write_synthetic
from agejobs.datasets.utkface import import_utkface, write_import

UTKFACE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "utkface-part1")


def test_round_trip_listing_and_atomic_outputs(s3_bucket):
    storage.write_bytes_atomic(f"{s3_bucket}/runs/a/report.json", b'{"mae": 3.5}')
    storage.write_many({f"{s3_bucket}/runs/a/img-{i}.jpg": bytes([i]) * (i + 1) for i in range(3)})
    assert storage.read_bytes(f"{s3_bucket}/runs/a/report.json") == b'{"mae": 3.5}'
    assert storage.list_files(f"{s3_bucket}/runs/a") == [
        (f"{s3_bucket}/runs/a/img-0.jpg", 1),
        (f"{s3_bucket}/runs/a/img-1.jpg", 2),
        (f"{s3_bucket}/runs/a/img-2.jpg", 3),
        (f"{s3_bucket}/runs/a/report.json", 12),
    ]


@pytest.mark.parametrize("suffix", ["no-such-bucket-zz/x.jpg", "{bucket}/missing/x.jpg"])
def test_permanent_errors_name_the_uri_and_are_not_retried(local_s3, s3_bucket, suffix, monkeypatch):
    uri = "s3://" + suffix.format(bucket=s3_bucket.removeprefix("s3://"))
    with FlakyProxy(local_s3.endpoint_url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(storage.StorageError, match=f"^{uri}: no such object"):
            storage.read_bytes(uri)
        with pytest.raises(storage.StorageError, match="no such object"):
            storage.list_files(uri.rsplit("/", 1)[0] + "/nothing-here")
    assert proxy.requests, "the request went through the proxy"
    seen = [(method, path) for method, path, _ in proxy.requests]
    assert len(seen) == len(set(seen)), f"a permanent error was retried: {proxy.requests}"


def test_transient_errors_are_retried_with_backoff(local_s3, s3_bucket, monkeypatch):
    storage.write_bytes_atomic(f"{s3_bucket}/face.jpg", b"\xff\xd8 bytes")
    with FlakyProxy(local_s3.endpoint_url, fail_first=3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        assert storage.read_bytes(f"{s3_bucket}/face.jpg") == b"\xff\xd8 bytes"
    statuses = [status for _, _, status in proxy.requests]
    assert statuses[:3] == [503, 503, 503] and 200 in statuses[3:]


def test_transient_errors_beyond_the_retry_budget_fail_naming_the_uri(local_s3, s3_bucket, monkeypatch):
    storage.write_bytes_atomic(f"{s3_bucket}/face.jpg", b"x")
    storage.configure(StorageConfig(retries=2))
    try:
        with FlakyProxy(local_s3.endpoint_url, fail_first=10_000) as proxy:
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
            with pytest.raises(storage.StorageError, match=f"^{s3_bucket}/face.jpg: .*Service Unavailable.*retries=2"):
                storage.read_bytes(f"{s3_bucket}/face.jpg")
    finally:
        storage.configure(StorageConfig())
    assert 2 <= len(proxy.requests) < 100  # retried, and then it stopped


def test_credentials_never_leave_the_process_in_a_dump(monkeypatch):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    cfg = load_config(None, ["storage.access_key_id=AKIAEXAMPLEKEY", "storage.secret_access_key=s3cr3t-value"])
    assert "s3cr3t" not in repr(cfg) and "AKIAEXAMPLEKEY" not in repr(cfg)
    assert "s3cr3t" not in config_to_yaml(cfg) and "s3cr3t" not in str(config_to_dict(cfg))
    storage.configure(cfg.storage)  # exported into the standard AWS chain instead
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "s3cr3t-value"
    assert "AWS_SECRET_ACCESS_KEY" not in storage.worker_environment()


def test_synthetic_faces_upload_and_pack_on_s3_with_rerun_skipping(s3_bucket):
    counts = write_synthetic(f"{s3_bucket}/syn", SynthSpec(num_subjects=12, images_per_subject=2, image_size=40))
    manifest = read_manifest(f"{s3_bucket}/syn/manifest.parquet")
    assert manifest.num_rows == counts["rows_ok"] == 24
    assert all(path.startswith(f"{s3_bucket}/syn/images/") for path in manifest.column("path").to_pylist())

    out = f"{s3_bucket}/packed"
    first = pack.pack(f"{s3_bucket}/syn/manifest.parquet", out, target_shard_bytes=8_000, runner="inline")
    assert first["rows_in"] == first["rows_ok"] == 24 and first["shards"] > 2 and first["shards_skipped"] == 0
    shards = pack.done_shards(out)
    assert [uri.rsplit("/", 1)[1] for uri in shards] == [f"shard-{i:05d}.parquet" for i in range(first["shards"])]
    fs, path = storage.filesystem_for(shards[0])
    table = pq.read_table(path, filesystem=fs)
    row = table.slice(0, 1).to_pylist()[0]
    assert row["image_bytes"] == storage.read_bytes(row["path"])  # the shard holds the file's exact bytes

    again = pack.pack(f"{s3_bucket}/syn/manifest.parquet", out, target_shard_bytes=8_000, runner="inline")
    assert again["shards_skipped"] == first["shards"] and again["rows_ok"] == 24


@pytest.mark.skipif(not os.path.isdir(UTKFACE), reason="needs ../shared/data/utkface-part1 beside the checkout")
def test_utkface_import_from_an_s3_prefix(s3_bucket, tmp_path):
    names = sorted(os.listdir(UTKFACE))[:20] + ["61_3_20170109150557335.jpg.chip.jpg"]
    fs, _ = storage.filesystem_for(s3_bucket)
    for name in names:
        fs.put(os.path.join(UTKFACE, name), f"{s3_bucket.removeprefix('s3://')}/utk/{name}")
    result = import_utkface(f"{s3_bucket}/utk", SplitSpec("subject", 0.25, seed=3))
    assert result.counts()["rows_in"] == 21 and result.counts()["rows_rejected"] == 1
    assert result.rejected[0].input == f"{s3_bucket}/utk/61_3_20170109150557335.jpg.chip.jpg"
    write_import(result, f"{s3_bucket}/manifests/utk")
    assert read_manifest(f"{s3_bucket}/manifests/utk/manifest.parquet").num_rows == 20
    assert split_protocol_of(f"{s3_bucket}/manifests/utk/manifest.parquet") == {
        "protocol": "subject",
        "test_fraction": 0.25,
        "seed": 3,
    }


def test_checkpoint_read_back_from_s3(s3_bucket):
    payload = {"model": {"w": torch.arange(3.0)}, "optimizer": {}, "train_state": {"step": 7}, "config": {}}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    storage.write_bytes_atomic(f"{s3_bucket}/ckpt/checkpoint_000001/{CHECKPOINT_FILE}", buffer.getvalue())
    restored = read_checkpoint(f"{s3_bucket}/ckpt/checkpoint_000001")
    assert restored["train_state"]["step"] == 7 and torch.equal(restored["model"]["w"], torch.arange(3.0))
    with pytest.raises(FileNotFoundError, match="not an agejobs checkpoint"):
        read_checkpoint(f"{s3_bucket}/ckpt/nothing")
