"""Connect to a Ray cluster, or start a private local one, and stop only what we started.

A local instance gets its own temp dir and an explicit CPU count: on a shared machine `ray stop`
(and any cleanup that looks for "the" Ray session) would kill other people's Ray processes. It
ends with its driver, even a killed one (ray_reaper).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings

from agejobs.ray_reaper import TEMP_PREFIX, claim, reap, reap_orphans, release, temp_root

# Logical CPUs of a local instance when none are given: Ray Data's ListFiles task takes 1 CPU and
# cannot be told otherwise, and embedding pipelines hold 1.5 in actors (decode 0.5, embed 1) from
# the start, so on a 2-core machine a gallery build could wait forever for its file listing.
MIN_LOCAL_CPUS = 4


CONSOLE_LEVELS = ("quiet", "warnings", "verbose")


@contextlib.contextmanager
def ray_session(
    address: str = "",
    num_cpus: int = 0,
    console: str = "warnings",
    metrics_export_port: int = 0,
    object_store_mb: int = 0,
):
    """Yield with Ray initialised; shut down afterwards only if this call started it.

    `console` for a local instance: "quiet" (the CLI's default: Ray forwards no worker output
    and logs only errors, so the console holds agejobs' own progress lines), "warnings" (worker
    output and Ray's warnings), "verbose" (Ray's INFO logs too; the CLI's --verbose). A cluster
    driver always forwards worker output: that is the job's log under `ray job submit`.
    `metrics_export_port` > 0: a local instance's metrics agent serves Ray's and agejobs' metrics
    there (Prometheus text format). `object_store_mb` > 0: a local instance's object store size."""
    import ray

    if console not in CONSOLE_LEVELS:
        raise ValueError(f"console must be one of {', '.join(CONSOLE_LEVELS)}, got {console!r}")

    # Ray >= 2.10 exports each Counter twice (a `_total` counter and, for old dashboards, a gauge
    # of the same name without it); only the conventional counter.
    os.environ.setdefault("RAY_EXPORT_COUNTER_AS_GAUGE", "0")

    if ray.is_initialized():
        yield
        return
    if address or os.environ.get("RAY_ADDRESS"):
        # Under `ray job submit` the driver inherits RAY_ADDRESS and joins that cluster; its
        # workers' lines (the per-step training log) go to the job's log, as they do locally.
        ray.init(address=address or None, log_to_driver=True)
        try:
            yield
        finally:
            ray.shutdown()
        return
    with _local_instance(num_cpus, console, metrics_export_port, object_store_mb):
        yield


@contextlib.contextmanager
def _local_instance(num_cpus: int, console: str, metrics_export_port: int, object_store_mb: int):
    """A private local instance: own temp dir, explicit CPUs, ended with this process (ray_reaper)."""
    import ray

    if console == "quiet":  # Ray's own deprecation notices, raised in this process
        warnings.filterwarnings("ignore", module=r"ray(\.|$)")
    reap_orphans()  # instances of drivers that were killed before they could stop them
    temp_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=temp_root())
    watcher = claim(temp_dir)  # ends the instance if this process is killed
    cpus = num_cpus or max(os.cpu_count() or 1, MIN_LOCAL_CPUS)
    try:
        ray.init(
            num_cpus=cpus,
            _temp_dir=temp_dir,
            include_dashboard=False,
            _metrics_export_port=metrics_export_port or None,
            object_store_memory=object_store_mb * 2**20 if object_store_mb else None,
            log_to_driver=console != "quiet",
            configure_logging=True,
            logging_level={"quiet": "ERROR", "warnings": "WARNING", "verbose": "INFO"}[console],
            runtime_env={"worker_process_setup_hook": f"{__name__}.{without_dashboard_noise.__name__}"},
        )
        if console == "quiet":
            quiet_ray_data_console()
        yield
    finally:
        ray.shutdown()
        release(watcher)
        reap(temp_dir)  # any worker that outlived the shutdown, then the temp dir


def quiet_ray_data_console() -> None:
    """Ray Data logs INFO lines ("execution finished in ...") and a warning that its progress bars
    are off to the console through a handler of its own; keep its errors there, the rest in its
    session log file."""
    import logging

    import ray.data  # noqa: F401  (configures the "ray.data" logger and its handlers)
    from ray.data._internal.logging import SessionFileHandler

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, SessionFileHandler):
            handler.setLevel(logging.ERROR)


# Ray Train V2's PlacementGroupCleaner asks the State API (served by the dashboard) every few
# seconds whether the train controller lives; with the dashboard off each query fails and logs a
# warning: ~80% of the lines of a `make utkface` log. A local instance's placement groups end with
# the instance anyway, so that warning says nothing here (ray-project/ray#65447 reworks the cleaner).
PLACEMENT_GROUP_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def without_dashboard_noise() -> None:
    """Worker-process setup hook of a local instance (run in every Ray worker before its task)."""
    import logging

    logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).setLevel(logging.ERROR)


def quiet_ray_data() -> None:
    """Ray Data's per-operator progress bars drown the CLI's own; keep its warnings only."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
