"""The compute block: joining or starting Ray, and refusing a cluster before any work."""

from __future__ import annotations

import pytest

from xlpref.cluster import ComputeConfig, check_capacity, ray_session
from xlpref.errors import InputError

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'xlpref[ray]')")


def test_an_unreachable_ray_address_is_refused_in_one_line_before_any_work():
    with pytest.raises(InputError, match="cannot reach the Ray cluster at '127.0.0.1:1'"):
        with ray_session(ComputeConfig(engine="ray", address="127.0.0.1:1")):
            pytest.fail("the session must not start")


def test_a_malformed_ray_address_names_the_expected_forms():
    with pytest.raises(InputError, match="expected 'auto', 'host:port'"):
        with ray_session(ComputeConfig(engine="ray", address="nowhere")):
            pytest.fail("the session must not start")


def test_a_cluster_without_the_requested_gpus_is_refused():
    with pytest.raises(InputError, match="2 workers x 1 GPUs need 2 GPUs; the Ray cluster has 1"):
        check_capacity(ComputeConfig(engine="ray", workers=2, gpus_per_worker=1), {"CPU": 8, "GPU": 1})
    check_capacity(ComputeConfig(engine="ray", workers=2, gpus_per_worker=0.5), {"GPU": 1})


def test_a_local_ray_session_reports_its_node_and_stops_afterwards():
    import ray

    with ray_session(ComputeConfig(engine="ray"), num_cpus=1) as info:
        assert ray.is_initialized()
        assert len(info["nodes"]) == 1 and info["resources"]["CPU"] == 1
        assert info["ray_version"] == ray.__version__
    assert not ray.is_initialized()
