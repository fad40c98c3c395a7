"""What the benchmarks run on, and the yardsticks they measure against.

- :func:`machine_info`: cores, CPU model, torch / transformers versions, threads, load, date.
- :func:`matmul_rate`: the machine's measured fp32 (or bf16) matrix-multiply rate in GFLOP/s at
  Gemma-3-270M's width, output kept in the cache (its best case); useful-FLOP utilisation is reported
  against it.
- :class:`PeakRSS`: peak resident memory above the starting point while a block runs, sampled by a
  thread (torch kernels release the GIL). glibc's free memory is returned first (``malloc_trim``) so
  one measurement does not inherit another's freed pages.

Example::

    from benchmarks.perf.machine import PeakRSS, machine_info, matmul_rate
    print(machine_info()["cpu_model"], matmul_rate(seconds=1.0))
    with PeakRSS() as peak:
        bytearray(100 << 20)
    print(peak.megabytes)
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
import time
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info() -> dict:
    """Cores, CPU, versions, threads and load: the facts every benchmark JSON carries."""
    import torch
    import transformers

    flags = cpu_flags()
    return {
        "cpu_model": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "simd": sorted(f for f in flags if f.startswith(("avx", "amx")) or f == "fma"),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "load_average_1m": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def matmul_rate(*, dtype: Any = None, rows: int = 2048, hidden: int = 640, columns: int = 1024,
                seconds: float = 1.5, max_repeats: int = 9) -> float:
    """Median GFLOP/s of ``[rows, hidden] @ [hidden, columns]`` (default fp32), within about ``seconds``.

    The default is the machine's best case for Gemma-3-270M's width: an output that stays in the cache
    (8 MiB, written in place). A wide output (``[512, 640] @ [640, 32768]``, 64 MiB) measured 20-30% lower
    here, because writing it to main memory costs time; a yardstick set that low would let a scorer that
    avoids the write report more than 100% utilisation.
    """
    import torch

    dtype = dtype or torch.float32
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, hidden, generator=generator).to(dtype)
    b = torch.randn(hidden, columns, generator=generator).to(dtype)
    out = torch.empty(rows, columns, dtype=dtype)
    flops = 2 * rows * hidden * columns
    with torch.inference_mode():
        start = time.perf_counter()
        torch.mm(a, b, out=out)  # warm-up (thread pool, packing buffers)
        rates = []
        deadline = start + seconds
        while len(rates) < max_repeats and (not rates or time.perf_counter() < deadline):
            tick = time.perf_counter()
            torch.mm(a, b, out=out)
            rates.append(flops / (time.perf_counter() - tick) / 1e9)
    return sorted(rates)[len(rates) // 2]


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * _PAGE


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc), so RSS reflects live memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Peak RSS above the level at entry, in bytes (``peak``) and MiB (``megabytes``); Linux only."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakRSS":
        import gc

        gc.collect()
        release_free_memory()
        self._start = _rss_bytes()
        self._highest = self._start
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._highest = max(self._highest, _rss_bytes())
            time.sleep(self.interval_s)

    def __exit__(self, *exc: Any) -> None:
        self._highest = max(self._highest, _rss_bytes())
        self._stop.set()
        self._thread.join()
        self.peak = self._highest - self._start

    @property
    def megabytes(self) -> float:
        return self.peak / (1 << 20)
