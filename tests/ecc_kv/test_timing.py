"""ecc_kv.timing: every repeat is returned, bad arguments are refused, and the host lead keeps host
latency out of CUDA windows."""

from __future__ import annotations

import time

import pytest
import torch

from ecc_kv.timing import time_fn, time_stats


def test_time_fn_returns_one_positive_time_per_repeat(device: str) -> None:
    x = torch.ones(1000, device=device)
    calls = []
    times = time_fn(lambda: calls.append(x.sum()), device=device, warmup=2, repeats=5)
    assert len(times) == 5 and len(calls) == 7 and all(t > 0 for t in times)


@pytest.mark.parametrize("kw", [{"warmup": -1}, {"repeats": 0}, {"host_lead_ms": -0.5}])
def test_time_fn_rejects_bad_arguments(kw: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        time_fn(lambda: None, device="cpu", **kw)


def test_time_stats_of_known_values() -> None:
    st = time_stats([4.0, 1.0, 3.0, 2.0, 5.0])
    assert st["median_ms"] == 3.0 and st["min_ms"] == 1.0 and st["n"] == 5.0 and st["mean_ms"] == 3.0
    with pytest.raises(ValueError, match="at least one"):
        time_stats([])


@pytest.mark.gpu
def test_host_lead_keeps_host_latency_out_of_the_window() -> None:
    x = torch.ones(1 << 10, device="cuda")

    def slow_host() -> None:  # 2 ms of host work before a tiny kernel
        time.sleep(2e-3)
        x.add_(1)

    plain = time_stats(time_fn(slow_host, device="cuda", warmup=1, repeats=5))["median_ms"]
    led = time_stats(time_fn(slow_host, device="cuda", warmup=1, repeats=5, host_lead_ms=5.0))["median_ms"]
    assert plain > 1.5 and led < 0.5, (plain, led)
