"""Shared fixtures: a real S3-compatible endpoint (moto's server) on 127.0.0.1, started and
stopped by the tests themselves."""

import uuid

import pytest

from agejobs.s3_local import LocalS3


@pytest.fixture(scope="session")
def local_s3():
    with LocalS3() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(local_s3) -> str:
    """A fresh bucket per test: s3://<name>."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    local_s3.create_bucket(name)
    return f"s3://{name}"
