"""Fused quantize+encode / decode(+inject)+dequantize vs the unfused torch chain, bit for bit."""

from __future__ import annotations

import pytest
import torch

from ecc_kv import layouts
from ecc_kv.codecs import get_codec
from ecc_kv.quant import dequantize_int4, quantize_int4
from kernels.faults import inject_triton
from kernels.fused_codec import decode_dequantize, quantize_encode

CASES = [("int4", 40), ("hamming74", 96), ("hamming84", 40), ("golay2412", 72), ("golay2412", 48)]


def _reference_store(name: str, codes: torch.Tensor, d: int) -> torch.Tensor:
    packed = layouts.pack_int4(codes)
    return packed if name == "int4" else layouts.encode_stored(name, packed, d)


def _reference_codes(name: str, stored: torch.Tensor, d: int) -> tuple[torch.Tensor, list[int]]:
    if name == "int4":
        return layouts.unpack_int4(stored, d), [0, 0]
    packed, status = layouts.decode_stored(name, stored, d)
    c = get_codec(name).counts(status)
    return layouts.unpack_int4(packed, d), [c["corrected"], c["detected"]]


@pytest.mark.parametrize("name,d", CASES)
@pytest.mark.parametrize("group_size", [None, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_quantize_encode_matches_unfused(name, d, group_size, dtype, device):
    gen = torch.Generator().manual_seed(d + (group_size or 0))
    x = (torch.randn(3, 5, d, generator=gen) * 3).to(dtype)
    x[0, 0] = 0  # zero rows: scale 0, code 8
    x[1, 2] = 1.5  # all-equal rows
    stored, scales = quantize_encode(name, x.to(device), group_size)
    codes, ref_scales = quantize_int4(x, group_size)
    assert torch.equal(scales.cpu(), ref_scales)
    assert torch.equal(stored.cpu(), _reference_store(name, codes, d))
    assert stored.shape[-1] == layouts.nbytes(name, d)


@pytest.mark.parametrize("name,d", CASES)
@pytest.mark.parametrize("group_size", [None, 8])
def test_decode_dequantize_matches_unfused(name, d, group_size, device):
    gen = torch.Generator().manual_seed(7 * d)
    x = torch.randn(2, 7, d, generator=gen)
    codes, scales = quantize_int4(x, group_size)
    stored = _reference_store(name, codes, d)
    garbage = torch.randint(0, 256, stored.shape, generator=gen, dtype=torch.uint8)
    for s in (stored, garbage):
        for dtype in (torch.float16, torch.float32):
            y, counts = decode_dequantize(name, s.to(device), scales.to(device), d, group_size, dtype)
            ref_codes, ref_counts = _reference_codes(name, s, d)
            assert torch.equal(y.cpu(), dequantize_int4(ref_codes, scales, group_size, dtype))
            assert counts.tolist() == ref_counts


@pytest.mark.parametrize("name,d", [("hamming84", 8), ("hamming74", 32), ("golay2412", 24)])
def test_fused_injection_equals_inject_then_decode(name, d, device):
    x = torch.randn(4, d, generator=torch.Generator().manual_seed(1))
    codes, scales = quantize_int4(x)
    stored = _reference_store(name, codes, d).to(device)
    y, counts = decode_dequantize(name, stored, scales.to(device), d, ber=0.03, seed=5)
    flipped, _ = inject_triton(stored.reshape(-1).view(torch.int32), 32, 0.03, 5)
    ref_codes, ref_counts = _reference_codes(name, flipped.view(torch.uint8).reshape(stored.shape).cpu(), d)
    assert torch.equal(y.cpu(), dequantize_int4(ref_codes, scales, None, torch.float16))
    assert counts.tolist() == ref_counts


def test_fused_rejects_bad_geometry(device):
    with pytest.raises(ValueError, match="multiple of 24"):
        quantize_encode("golay2412", torch.zeros(2, 32, device=device))
    with pytest.raises(ValueError, match="group_size=5"):
        quantize_encode("hamming84", torch.zeros(2, 32, device=device), 5)
    with pytest.raises(ValueError, match="unknown layout"):
        quantize_encode("bch", torch.zeros(2, 32, device=device))
