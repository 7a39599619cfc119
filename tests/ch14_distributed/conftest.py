"""One pool of 4 gloo processes for the whole chapter: starting processes costs seconds, so
every test that needs real ranks shares it (2-rank cases run on its first two ranks)."""
import pytest


@pytest.fixture(scope="session")
def pool():
    from gpulab.dist.launch import Workers

    with Workers(4, backend="gloo", timeout_s=60) as workers:
        yield workers
