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
