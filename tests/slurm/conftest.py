"""The ``slurm_cluster`` fixture: a real single-node SLURM for a test module, stopped by PID at the end (also when
a test fails). When SLURM cannot be installed or started the tests FAIL with the reason (they are part of
``make test``; a silent skip would hide a broken launcher)."""
import pytest

from tests.slurm.cluster import LocalSlurm, SlurmUnavailable


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except (SlurmUnavailable, OSError, RuntimeError) as e:
        cluster.stop()
        pytest.fail(f"SLURM could not be started: {e}", pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    """Two slurmd "hosts" in their own network namespaces + slurmctld in a third (tests/slurm/netns_cluster.py);
    every process in them is killed by PID and the namespaces deleted at the end, also when a test fails."""
    from tests.slurm.netns_cluster import TwoNodeSlurm

    cluster = TwoNodeSlurm(tmp_path_factory.mktemp("slurm2"))
    try:
        cluster.start()
    except (SlurmUnavailable, OSError, RuntimeError) as e:
        cluster.stop()
        pytest.fail(f"two-node SLURM could not be started: {e}", pytrace=False)
    print(f"\n[two-node cluster] started in {cluster.started_s:.1f} s")
    try:
        yield cluster
    finally:
        cluster.stop()
        print(f"\n[two-node cluster] stopped in {cluster.stopped_s:.1f} s; leftovers: {cluster.leftovers()}")
        assert cluster.leftovers() == [], cluster.leftovers()
