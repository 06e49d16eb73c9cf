"""The local Ray instance agejobs starts: enough logical CPUs for a pipeline, quiet workers."""

import importlib
import logging
import os

import pytest

from agejobs.ray_runtime import MIN_LOCAL_CPUS, PLACEMENT_GROUP_CLEANER_LOGGER, ray_session, without_dashboard_noise

pytestmark = pytest.mark.ray


def test_local_instance_has_the_logical_cpus_an_embedding_pipeline_holds():
    import ray

    # ListFiles (1) + reads (0.25) + decode (0.5) + embed (1) must fit at once on a 2-core machine.
    with ray_session():
        assert ray.cluster_resources()["CPU"] == max(MIN_LOCAL_CPUS, os.cpu_count())
    with ray_session(num_cpus=1):
        assert ray.cluster_resources()["CPU"] == 1  # an explicit count is kept


def test_local_ray_workers_drop_the_dashboardless_placement_group_warning():
    cleaner = importlib.import_module(PLACEMENT_GROUP_CLEANER_LOGGER)  # fails if Ray moves the module
    assert cleaner.logger.name == PLACEMENT_GROUP_CLEANER_LOGGER
    level = cleaner.logger.level
    try:
        without_dashboard_noise()
        assert not cleaner.logger.isEnabledFor(logging.WARNING) and cleaner.logger.isEnabledFor(logging.ERROR)
    finally:
        cleaner.logger.setLevel(level)
