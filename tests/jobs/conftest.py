"""One local Ray head on 127.0.0.1 for all job tests: started on free ports, stopped (every process) after."""

from collections.abc import Iterator

import pytest

from ardiff_scale.jobs.cluster import LocalHead, start_local_head

TEST_KNOBS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


@pytest.fixture(scope="session")
def ray_head() -> Iterator[LocalHead]:
    """A head with 2 CPUs and a 200 MB object store; its `dashboard_url` is what `--address` takes."""
    # A killed Ray Train worker is noticed at the next health check: every 0.2 s here, not Ray's default.
    head = start_local_head(num_cpus=2, object_store_mb=200, env=TEST_KNOBS)
    try:
        yield head
    finally:
        head.stop()

