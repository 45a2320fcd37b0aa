"""Triton interpolation against the torch twin: random bad masks, odd shapes, every dtype and window."""

from __future__ import annotations

import pytest
import torch

from ecc_kv.interp import interpolate_detected


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape,window,p_bad", [((2, 3, 37, 19), 1, 0.3), ((1, 130, 200), 2, 0.6), ((4, 1, 5), 3, 0.5)])
def test_triton_matches_torch(dtype: torch.dtype, shape: tuple[int, ...], window: int, p_bad: float, device: str) -> None:
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=gen) * 10).to(dtype).to(device)
    bad = (torch.rand(shape, generator=gen) < p_bad).to(device)
    ref = interpolate_detected(x, bad, window)
    out = interpolate_detected(x, bad, window, backend="triton")
    diff = ref.view(torch.int16 if dtype != torch.float32 else torch.int32) != out.view(
        torch.int16 if dtype != torch.float32 else torch.int32
    )
    assert not diff.any(), f"first mismatch at {diff.nonzero()[0].tolist()}: {ref[diff][0]} vs {out[diff][0]}"
