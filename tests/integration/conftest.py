"""Integration fixtures: Redis Clusters, a store on the test's prefix, worker processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streamscore.config import Settings
from streamscore.store.store import RedisStore
from tests.integration.cluster_support import CLUSTER_URL_ENV, ClusterAdmin, LocalCluster
from tests.integration.harness import WorkerProcess, open_test_store


@dataclass
class ClusterUnderTest:
    """The session's cluster: started here (LocalCluster) or external (${CLUSTER_URL_ENV})."""

    url: str
    admin: ClusterAdmin
    local: LocalCluster | None

    def require_local(self) -> LocalCluster:
        """The embedded cluster, for a test that kills nodes; fails the test on an external one."""
        if self.local is None:
            pytest.fail(
                f"this test kills cluster nodes by PID, which needs the embedded cluster; "
                f"unset {CLUSTER_URL_ENV} to run it",
                pytrace=False,
            )
        return self.local


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterUnderTest]:
    """${CLUSTER_URL_ENV}'s cluster, else 3 primaries of Debian's redis-server on loopback."""
    external = os.environ.get(CLUSTER_URL_ENV)
    if external:
        admin = ClusterAdmin(external)
        try:
            yield ClusterUnderTest(external, admin, None)
        finally:
            admin.close()
        return
    cluster = LocalCluster.start(primaries=3)
    try:
        yield ClusterUnderTest(cluster.url, cluster.admin, cluster)
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster_with_replicas() -> Iterator[ClusterUnderTest]:
    """3 primaries with one replica each, for failover tests (always embedded: they kill nodes)."""
    if os.environ.get(CLUSTER_URL_ENV):
        pytest.fail(
            f"the failover tests kill nodes by PID and start their own cluster; "
            f"unset {CLUSTER_URL_ENV} to run them",
            pytrace=False,
        )
    # A 2 s node timeout: a killed primary is marked failed (CLUSTERDOWN) within seconds.
    cluster = LocalCluster.start(primaries=3, replicas_per_primary=1, node_timeout_ms=2000)
    try:
        yield ClusterUnderTest(cluster.url, cluster.admin, cluster)
    finally:
        cluster.stop()


@pytest.fixture
async def store(settings_factory: Callable[..., Settings]) -> AsyncIterator[RedisStore]:
    store = await open_test_store(settings_factory())
    yield store
    await store.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Workers a test starts; any still running at the end are SIGKILLed by PID."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


@pytest.fixture(params=["single", "cluster"])
def redis_choice(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for the session's Redis, or for the 3-primary cluster with 16 key groups (so
    that two leads, or a lead and its account, are all but surely on different slots: each
    commit touches one group)."""
    if request.param == "single":
        return {}
    cluster: ClusterUnderTest = request.getfixturevalue("redis_cluster")
    return {"redis_url": cluster.url, "redis_cluster": "true", "redis_key_groups": 16}
