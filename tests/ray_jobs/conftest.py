"""A loopback-only local Ray per test module (started and shut down around the module)."""
import pytest


@pytest.fixture(scope="module")
def ray_local():
    from suite.ray_local import init_ray

    ray = init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
