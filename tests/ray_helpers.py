"""A two-node Ray cluster on this machine (two raylets of one CPU each), for the multi-node tests.

Example::

    from ray_helpers import two_node_ray_cluster
    with two_node_ray_cluster() as cluster:
        print(cluster.address)
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


@contextlib.contextmanager
def two_node_ray_cluster() -> Iterator[Any]:
    """Start the head and one more raylet; on exit, disconnect this process and stop both."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
