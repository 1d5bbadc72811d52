import pytest

from tests.distributed.launcher import spawn


@pytest.fixture(scope="session")
def engine_checks():
    """Everything the single-process engine tests (static and continuous) assert on, from one spawned process
    with one model build (``engine_workers.single_process_checks``)."""
    return spawn("tests.unit.rollout.engine_workers:single_process_checks", 1)[0]
