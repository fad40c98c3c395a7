"""Where heavy stages run: this process (``engine: local``) or a Ray cluster (``engine: ray``).

Ray is the engine vLLM, OpenRLHF and open-instruct use to spread work over GPUs and machines; the
project schedules nothing itself. :func:`ray_session` starts a local Ray instance for the command
(``address: null``) or joins a running cluster (``address: auto`` or ``ray://host:10001`` or
``host:6379``), and checks before any work that the cluster can hold the requested workers.

Example::

    compute = ComputeConfig(engine="ray", workers=2)
    with ray_session(compute) as info:
        print(info["nodes"], info["resources"])
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from xlpref.errors import InputError

class ComputeConfig(BaseModel):
    """The ``compute`` block of a run config (and the ``--engine/--workers/--ray-address`` flags)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["local", "ray"] = Field("local", description="local: this process; ray: worker actors")
    address: Optional[str] = Field(None, description="null: start a local Ray instance for the command; "
                                   "'auto' or a Ray address: join that cluster")
    workers: int = Field(1, ge=1, description="worker actors per stage (vLLM: one engine per worker)")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs each worker reserves (vLLM: tensor_parallel_size)")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs each worker reserves")
    storage: Optional[Path] = Field(None, description="a folder every node reads and writes (models, "
                                    "checkpoints) when the cluster spans several machines")


def _import_ray():
    try:
        import ray
    except ImportError as error:  # the extra is missing
        raise InputError("compute.engine 'ray' needs the ray package: pip install 'xlpref[ray]'",
                         field="compute.engine") from error
    return ray


def cluster_summary(ray) -> dict:
    """Nodes, resources and the Ray version of the connected cluster (for manifests and stage summaries)."""
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    return {
        "ray_version": ray.__version__,
        "nodes": [{"node_id": node["NodeID"], "address": node.get("NodeManagerAddress"),
                   "resources": {key: value for key, value in node.get("Resources", {}).items()
                                 if key in ("CPU", "GPU", "memory")}} for node in nodes],
        "resources": {key: value for key, value in ray.cluster_resources().items() if key in ("CPU", "GPU")},
    }


def check_capacity(compute: ComputeConfig, resources: dict) -> None:
    """Refuse (exit 2) a cluster that cannot hold ``workers`` x ``gpus_per_worker`` GPUs at once."""
    wanted_gpus = compute.workers * compute.gpus_per_worker
    have_gpus = resources.get("GPU", 0)
    if wanted_gpus > have_gpus:
        raise InputError(f"{compute.workers} workers x {compute.gpus_per_worker:g} GPUs need {wanted_gpus:g} GPUs; "
                         f"the Ray cluster has {have_gpus:g}", field="compute.gpus_per_worker")


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a ``host:port`` or ``ray://host:port`` that accepts no connection.

    ``ray.init`` retries an unreachable GCS for minutes; a user who typed the wrong address should
    hear so at once.
    """
    if address == "auto":
        return
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"expected 'auto', 'host:port' or 'ray://host:port', got {address!r}",
                         field="compute.address")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise InputError(f"cannot reach the Ray cluster at {address!r}: {error.strerror or error}",
                         field="compute.address") from error


@contextlib.contextmanager
def ray_session(compute: ComputeConfig, *, num_cpus: int | None = None) -> Iterator[dict]:
    """Connect to Ray for one command: start (and stop) a local instance, or join ``compute.address``.

    An address that cannot be reached, or a cluster without the requested GPUs, is refused with one
    line (:class:`InputError`, exit 2) before any work. Joining a cluster leaves it running.
    """
    ray = _import_ray()
    already = ray.is_initialized()
    if not already:
        options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if compute.address is None:
            options["num_cpus"] = num_cpus
        else:
            _check_reachable(compute.address)
        try:
            # "local", not None: with None, ray.init joins the cluster named in /tmp/ray/ray_current_cluster
            # (the last `ray start` on this machine, perhaps long gone) instead of starting one.
            ray.init(address=compute.address or "local", **options)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise InputError(f"cannot reach the Ray cluster at {compute.address!r}: {str(error).splitlines()[0]}",
                             field="compute.address") from error
    try:
        info = cluster_summary(ray)
        check_capacity(compute, info["resources"])
        yield info
    finally:
        if not already:
            ray.shutdown()
