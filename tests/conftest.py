"""Shared fixtures: a real S3-compatible endpoint (moto's server) on 127.0.0.1, started and
stopped by the tests themselves; and the `ray` marker that `make test-fast` leaves out.

Every test that starts Ray (in this process or in a command it runs) carries the `ray` marker
(module-level `pytestmark` or per test). Under `make test-fast` (`-m "not ray"`) a test that
starts Ray in this process without the marker fails, naming the marker, so the fast suite
cannot silently grow a Ray start-up."""

import os
import uuid

import pytest

from agejobs.s3_local import LocalS3

FAST = "AGEJOBS_TEST_FAST"


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


@pytest.fixture(autouse=True)
def no_ray_in_the_fast_suite(request, monkeypatch):
    if not os.environ.get(FAST) or request.node.get_closest_marker("ray"):
        yield
        return
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError(
            f"{request.node.nodeid} starts Ray: mark it @pytest.mark.ray (make test-fast leaves those out)"
        )

    monkeypatch.setattr(ray, "init", refuse)
    yield
