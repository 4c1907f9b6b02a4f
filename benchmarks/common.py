"""Shared plumbing of the benchmark scripts: argument defaults, timing, JSON results.

Benchmarks are scripts, not tests: each prints a table and writes one JSON file (default
benchmarks/results/<name>-<host>.json). Timings are wall clock around a GPU sync (a 16-byte
readback, see kernels/device/context.py), median of `reps` repetitions of `inner` launches each.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=doc)
    p.add_argument("--out", default=None,
                   help=f"JSON result path (default benchmarks/results/{name}-<host>.json)")
    p.add_argument("--quick", action="store_true",
                   help="small shapes and few repetitions (CPU / lavapipe smoke run)")
    return p


def out_path(name: str, arg: str | None) -> Path:
    if arg:
        return Path(arg)
    return HERE / "results" / f"{name}-{socket.gethostname()}.json"


def machine_info(ctx=None) -> dict:
    info = {"host": socket.gethostname(), "python": sys.version.split()[0],
            "platform": platform.platform(), "cpus": os.cpu_count()}
    if ctx is not None:
        info["adapter"] = {k: ctx.info.get(k) for k in ("device", "vendor", "backend_type",
                                                      "adapter_type", "description")}
        info["features"] = sorted(ctx.features)
    return info


def time_gpu(ctx, fn: Callable[[], object], *, inner: int = 10, reps: int = 5,
             warmup: int = 1) -> tuple[float, float]:
    """(GPU seconds, host encode seconds) per call of fn, which only encodes GPU work.

    Each rep encodes `inner` calls untimed for the GPU (nothing is submitted while encoding:
    the device layer's periodic flush is switched off here), then times submit + wait: that is
    GPU execution time plus one submit. The host time is the encoding itself. Medians over
    reps; the first `warmup` reps (pipeline compilation) are dropped."""
    from bitswarm.kernels import device
    saved = device.FLUSH_EVERY
    device.FLUSH_EVERY = 1 << 30
    try:
        ctx.sync()
        t0 = time.perf_counter()
        fn()                    # compile + first run; long kernels get fewer inner calls
        ctx.sync()
        first = time.perf_counter() - t0
        inner = max(1, min(inner, int(0.05 / max(first, 1e-6))))
        gpu, host = [], []
        for r in range(warmup + reps):
            ctx.sync()
            t0 = time.perf_counter()
            keep = [fn() for _ in range(inner)]
            t1 = time.perf_counter()
            ctx.sync()
            t2 = time.perf_counter()
            del keep
            if r >= warmup:
                host.append((t1 - t0) / inner)
                gpu.append((t2 - t1) / inner)
        return statistics.median(gpu), statistics.median(host)
    finally:
        device.FLUSH_EVERY = saved


def time_host(fn: Callable[[], object], *, inner: int = 1, reps: int = 3, warmup: int = 1,
              sync: Callable[[], object] | None = None) -> float:
    """Seconds per call of a host function (NumPy / torch; `sync` e.g. torch.cuda.synchronize)."""
    times = []
    for r in range(warmup + reps):
        if sync:
            sync()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        if sync:
            sync()
        if r >= warmup:
            times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=float))
    print(f"wrote {path}")


def load_peak(path: str | None) -> dict | None:
    """A peak.py result (for fractions of peak), or None."""
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def torch_cuda():
    """torch when it is importable and sees a CUDA GPU, else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


class DriverMemory:
    """Device-wide GPU memory in use as the driver reports it (`nvidia-smi --query-gpu=
    memory.used`, MiB), sampled every `interval` s on a thread while the block runs: a check on
    the device layer's own counter that also sees wgpu's internal allocations (staging,
    pipelines, the Vulkan context). `baseline_mib` is read on entry, `peak_mib` is the largest
    sample; both stay None where nvidia-smi is absent (lavapipe, other vendors)."""

    def __init__(self, interval: float = 0.1):
        import shutil
        self.interval = interval
        self.cmd = shutil.which("nvidia-smi")
        self.baseline_mib = self.peak_mib = None

    def read(self) -> int | None:
        """One reading of memory.used (MiB), or None."""
        import subprocess
        try:
            out = subprocess.run([self.cmd, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5).stdout
            return int(out.split()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def __enter__(self):
        import threading
        if self.cmd is None:
            return self
        self.baseline_mib = self.peak_mib = self.read()
        self._stop = threading.Event()

        def loop():
            while not self._stop.wait(self.interval):
                v = self.read()
                if v is not None:
                    self.peak_mib = max(self.peak_mib or 0, v)
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cmd is not None:
            self._stop.set()
            self._thread.join()
        return False

    def result(self) -> dict:
        if self.baseline_mib is None:
            return {}
        return {"driver_baseline_mib": self.baseline_mib, "driver_peak_mib": self.peak_mib,
                "driver_delta_mib": self.peak_mib - self.baseline_mib}
