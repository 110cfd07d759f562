"""One local Ray head on 127.0.0.1 for all job tests: started on free ports, stopped (every process) after."""

from collections.abc import Iterator

import pytest

from ardiff_scale.jobs.cluster import LocalHead, start_local_head


@pytest.fixture(scope="session")
def ray_head() -> Iterator[LocalHead]:
    """A head with 2 CPUs and a 200 MB object store; its `dashboard_url` is what `--address` takes."""
    head = start_local_head(num_cpus=2, object_store_mb=200)
    try:
        yield head
    finally:
        head.stop()

