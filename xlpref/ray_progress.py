"""One rich progress bar per Ray stage: work done, workers alive, the cluster's GPUs in use.

The workers of a Ray stage run in other processes, often on other machines, so they report to a
:class:`ProgressBoard`: a small Ray actor (no CPU reserved) holding, per worker, the work it has done
and when it last spoke. A worker that stops speaking for :data:`ALIVE_S` seconds (killed, or its
node lost) no longer counts as alive; a restarted worker counts again from its first report. The
driver's :func:`ray_stage_progress` bar polls the board and Ray's resource view twice a second.

Work is counted per worker and summed (records: each worker its own share) or, with
``combine="max"``, the furthest worker's count (training: every rank is at the same optimizer step).

Example (the driver of a stage; workers call ``board.report.remote(worker_id, done)``)::

    with ray_stage_progress(console, "iter_0/samples", total=120, unit="records") as bar:
        board = bar.board                  # hand it to the workers
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator

#: Seconds without a report after which a worker counts as gone.
ALIVE_S = 5.0
#: Seconds between two of the driver's polls.
POLL_S = 0.5
#: Seconds between two heartbeats of a worker's :class:`Heartbeat`.
HEARTBEAT_S = 1.0


class ProgressBoard:
    """Per-worker counts and last report times (run as an actor: see :func:`make_board`)."""

    def __init__(self) -> None:
        self.workers: dict[str, tuple[int, float]] = {}

    def report(self, worker: str, done: int) -> None:
        self.workers[worker] = (done, time.monotonic())  # the actor's clock: no skew between nodes

    def snapshot(self, combine: str = "sum") -> dict:
        now = time.monotonic()
        counts = [done for done, _ in self.workers.values()]
        done = (max(counts) if combine == "max" else sum(counts)) if counts else 0
        alive = sum(1 for _, seen in self.workers.values() if now - seen <= ALIVE_S)
        return {"done": done, "alive": alive}


def make_board(ray: Any) -> Any:
    """A :class:`ProgressBoard` actor on this (the driver's) node; it reserves no CPU."""
    return ray.remote(num_cpus=0)(ProgressBoard).remote()


class Heartbeat:
    """A worker-side thread that reports ``done`` to the board every :data:`HEARTBEAT_S` seconds.

    The worker sets :attr:`done` as its work progresses; the thread dies with the process, so a
    killed worker stops counting as alive.
    """

    def __init__(self, board: Any, worker: str) -> None:
        self.board, self.worker, self.done = board, worker, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xlpref-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.board.report.remote(self.worker, self.done)
            self._stop.wait(HEARTBEAT_S)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.board.report.remote(self.worker, self.done)


def gpus_in_use(ray: Any) -> tuple[float, float]:
    """(GPUs reserved by running tasks and actors, GPUs in the cluster)."""
    total = ray.cluster_resources().get("GPU", 0.0)
    return total - ray.available_resources().get("GPU", 0.0), total


def dashboard_url(ray: Any) -> str | None:
    """The Ray dashboard's address, or None when the dashboard is off."""
    try:
        from ray._private.worker import get_dashboard_url

        url = get_dashboard_url()
    except Exception:  # an internal helper; a Ray without it has no address to print
        return None
    return url or None


class StageBar:
    """The driver's handle on a stage's bar: :attr:`board` for the workers; :meth:`refresh` polls it."""

    def __init__(self, ray: Any, progress: Any, task: Any, board: Any, combine: str) -> None:
        self.ray, self.progress, self.task, self.board, self.combine = ray, progress, task, board, combine
        self.last = {"done": 0, "alive": 0}

    def refresh(self) -> None:
        try:
            self.last = self.ray.get(self.board.snapshot.remote(self.combine), timeout=5)
        except Exception:  # a busy or restarting cluster: keep the last view
            pass
        used, total = gpus_in_use(self.ray)
        self.progress.update(self.task, completed=self.last["done"], alive=self.last["alive"],
                             gpus=f"{used:g}/{total:g}")


@contextlib.contextmanager
def ray_stage_progress(console: Any, description: str, *, total: int | None, unit: str = "records",
                       combine: str = "sum") -> Iterator[StageBar]:
    """Show one bar for a Ray stage while the block runs: ``unit`` done of ``total``, workers alive, GPUs."""
    import ray
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
               TextColumn("workers alive {task.fields[alive]}"), TextColumn("GPUs in use {task.fields[gpus]}"),
               TimeElapsedColumn()]
    board = make_board(ray)
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, alive=0, gpus="0/0")
        bar = StageBar(ray, progress, task, board, combine)
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(POLL_S):
                bar.refresh()

        thread = threading.Thread(target=poll, name="xlpref-progress", daemon=True)
        thread.start()
        try:
            yield bar
        finally:
            stop.set()
            thread.join()
            bar.refresh()
            ray.kill(board)
