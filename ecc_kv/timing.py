"""Timing helpers shared by every benchmark task, so all numbers are taken the same way.

GPU work is timed with CUDA events around each call after warm-up (the clock is read
only after a synchronize); CPU work with ``time.perf_counter``. Every repeat is kept so
tasks can store them in ``raw`` and summarise with median and IQR.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import torch


def time_fn(
    fn: Callable[[], object],
    *,
    device: str | torch.device,
    warmup: int = 5,
    repeats: int = 50,
    flush_l2: bool = False,
    host_lead_ms: float = 0.0,
) -> list[float]:
    """Milliseconds per call of ``fn`` for ``repeats`` calls after ``warmup`` untimed ones.

    On CUDA each call is bracketed by its own pair of events; with ``flush_l2`` a 256 MB
    buffer is zeroed before every call so bandwidth numbers are not served from L2.
    ``host_lead_ms`` > 0: the GPU also sleeps that long before each start event, so the host
    has queued the whole call before the window opens and the window holds the call's device
    time only. Without it, a call whose host side (Python, several launches) outlasts the
    flush leaves the GPU idle inside the window, and the time includes that host latency.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    if host_lead_ms < 0:
        raise ValueError(f"host_lead_ms must be >= 0, got {host_lead_ms}")
    is_cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    if not is_cuda:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return times
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=device) if flush_l2 else None
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    sleep = round(host_lead_ms * _sleep_cycles_per_ms(str(torch.device(device)))) if host_lead_ms > 0 else 0
    torch.cuda.synchronize(device)
    for i in range(repeats):
        if flush is not None:
            flush.zero_()
        if sleep:
            torch.cuda._sleep(sleep)  # keeps the GPU busy while the host queues the call
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]


@functools.lru_cache(maxsize=8)
def _sleep_cycles_per_ms(device: str) -> float:
    """GPU clock cycles per millisecond of ``torch.cuda._sleep``, measured once per device."""
    with torch.cuda.device(torch.device(device)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(1_000_000)  # warm-up
        start.record()
        torch.cuda._sleep(10_000_000)
        end.record()
        torch.cuda.synchronize()
        return 10_000_000 / start.elapsed_time(end)


def time_stats(times_ms: list[float]) -> dict[str, float]:
    """Median, IQR, p10/p90, mean, min and count of a list of millisecond timings."""
    if not times_ms:
        raise ValueError("time_stats needs at least one timing")
    xs = sorted(times_ms)
    if len(xs) >= 2:
        pct = statistics.quantiles(xs, n=20, method="inclusive")  # 5%, 10%, ..., 95%
        p10, q25, q75, p90 = pct[1], pct[4], pct[14], pct[17]
    else:
        q25 = q75 = p10 = p90 = xs[0]
    return {
        "median_ms": statistics.median(xs),
        "iqr_ms": q75 - q25,
        "p10_ms": p10,
        "p90_ms": p90,
        "mean_ms": statistics.fmean(xs),
        "min_ms": xs[0],
        "n": float(len(xs)),
    }


def copy_bandwidth_gbps(
    nbytes: int, *, device: str | torch.device, warmup: int = 3, repeats: int = 20, host_lead_ms: float = 0.0
) -> float:
    """Device-to-device copy bandwidth for a buffer of ``nbytes``, counting bytes read + written.

    This is the floor every memory-bound kernel is compared with, measured in the same run
    (``host_lead_ms``: device time only, as in :func:`time_fn`).
    """
    src = torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = time_fn(lambda: dst.copy_(src), device=device, warmup=warmup, repeats=repeats, host_lead_ms=host_lead_ms)
    return 2 * src.numel() / (statistics.median(times) * 1e-3) / 1e9


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"
