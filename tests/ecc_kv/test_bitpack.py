"""ecc_kv.bitpack: the planar layout, exact round trips at per-group widths, byte accounting."""

from __future__ import annotations

import pytest
import torch

from ecc_kv.bitpack import (
    byte_report,
    pack,
    pack_codes_torch,
    quantize_pack,
    unpack,
    unpack_codes_torch,
    unpack_dequantize,
)
from ecc_kv.uniform_quant import dequantize, quantize


def test_layout_is_bit_planar() -> None:
    codes = torch.tensor([[1, 2, 3, 0, 0, 0, 0, 0, 1]], dtype=torch.uint8)  # G=9 -> PB=2
    data = pack_codes_torch(codes, torch.tensor([2], dtype=torch.uint8))
    # plane 0: bit0 of codes -> values 0 (1) and 2 (3) and 8 (1): byte0 = 0b101, byte1 = 0b1
    # plane 1: bit1 of codes -> values 1 (2) and 2 (3): byte0 = 0b110, byte1 = 0
    assert data.tolist() == [0b101, 0b1, 0b110, 0]


@pytest.mark.parametrize("g", [1, 7, 8, 13, 64])
def test_codes_roundtrip_random_widths(g: int) -> None:
    torch.manual_seed(g)
    m = 37
    bits = torch.randint(1, 9, (m,), dtype=torch.uint8)
    codes = (torch.randint(0, 256, (m, g)) & ((1 << bits.long()) - 1)[:, None]).to(torch.uint8)
    data = pack_codes_torch(codes, bits)
    assert data.numel() == int(bits.long().sum()) * ((g + 7) // 8)
    assert torch.equal(unpack_codes_torch(data, bits, g), codes)


@pytest.mark.parametrize("scheme", ["minmax", "symmetric", "mean"])
@pytest.mark.parametrize("outliers", [0.0, 0.05])
def test_pack_unpack_dequantize_equals_simulation(scheme: str, outliers: float, device: str) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 40, device=device, dtype=torch.float16)
    bits = torch.randint(2, 9, (2, 3, 6), device=device)
    q = quantize(x, bits, group_size=20, scheme=scheme, outliers=outliers)
    p = pack(q)
    assert p.widths is not None and p.widths.numel() == 36
    q2 = unpack(p)
    assert torch.equal(q2.codes, q.codes)
    assert torch.equal(unpack_dequantize(p), dequantize(q))


def test_byte_report_counts_metadata() -> None:
    x = torch.randn(1, 2, 10, 64)
    p = quantize_pack(x, 4)
    r = byte_report(p)
    n = x.numel()
    assert p.widths is None  # fixed width: no per-token widths stored
    assert r["bytes_codes"] == n * 4 / 8
    assert r["bytes_scales"] == 2 * 20 and r["bytes_zeros"] == 2 * 20
    assert r["ratio_ideal"] == pytest.approx(4.0)
    assert r["ratio_real"] == pytest.approx(2 * n / (n / 2 + 80))
    po = quantize_pack(x, 4, outliers=0.01, scheme="symmetric")
    ro = byte_report(po)
    assert ro["bytes_zeros"] == 0 and ro["bytes_outliers"] == 20 * 2 * (2 + 1)
    pa = quantize_pack(x, torch.randint(1, 9, (1, 2, 10)), adaptive=True)
    assert byte_report(pa)["bytes_widths"] == 20
