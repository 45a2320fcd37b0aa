"""KV round trip (torch path): exact INT4 at ber=0, stored-bit layouts, correction guarantees, interpolation, stats."""

from __future__ import annotations

import math

import pytest
import torch

from ecc_kv.kv_protect import KINDS, decode_words, encode_words, roundtrip, stored_bits_per_value
from ecc_kv.modes import MODES, get_mode
from ecc_kv.quant import dequantize_int4, quantize_int4

INT4_MODES = [m for m in MODES if m != "fp16"]


def _x(shape: tuple[int, ...] = (2, 3, 11, 13), dtype: torch.dtype = torch.float16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).to(dtype)


def _int4(x: torch.Tensor, g: int | None = None) -> torch.Tensor:
    codes, scales = quantize_int4(x, g)
    return dequantize_int4(codes, scales, g, dtype=x.dtype)


def _masks(x: torch.Tensor, words_per_row: int, bits: list[int]) -> torch.Tensor:
    """int32 flip pattern with ``bits`` set in every stored word of every row."""
    m = torch.zeros(x.shape, dtype=torch.int32)
    m[..., :words_per_row] = sum(1 << b for b in bits)
    return m


@pytest.mark.parametrize("mode", INT4_MODES)
@pytest.mark.parametrize("g", [None, 13])
def test_ber_zero_is_exactly_int4(mode: str, g: int | None, device: str) -> None:
    x = _x().to(device)
    y, stats = roundtrip(x, mode, ber=0.0, seed=1, sink_tokens=4, group_size=g)
    assert torch.equal(y, _int4(x, g)) and y.dtype == x.dtype
    assert stats == {"bits_flipped": 0, "corrected": 0, "detected": 0, "interpolated": 0}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fp16_mode(dtype: torch.dtype, device: str) -> None:
    x = _x(dtype=dtype).to(device)
    y, _ = roundtrip(x, "fp16")
    want = x if dtype != torch.float32 else x.half().float()
    assert torch.equal(y, want) and y.dtype == dtype
    y2, st = roundtrip(x, "fp16", ber=0.05, seed=2)
    total = x.numel() * 16
    assert abs(st["bits_flipped"] - 0.05 * total) <= 5 * math.sqrt(total * 0.05) + 1


@pytest.mark.parametrize("kind", list(KINDS)[1:])
@pytest.mark.parametrize("d", [1, 5, 12, 13])
def test_word_layouts_round_trip(kind: str, d: int) -> None:
    codes = torch.randint(0, 16, (7, d), dtype=torch.uint8)
    words = encode_words(codes, kind)
    s, n = KINDS[kind]
    assert words.shape == (7, -(-d // s))
    assert int((words.to(torch.int64) & ~((1 << n) - 1) & 0xFFFFFFFF).abs().sum()) == 0  # only n bits used
    back, status = decode_words(words, kind, d)
    assert torch.equal(back, codes) and int(status.sum()) == 0


def test_stored_bits_per_value() -> None:
    assert stored_bits_per_value("int4-hamming", 128) == 7.0
    assert stored_bits_per_value("int4-msb-secded", 128) == 6.0 == get_mode("int4-msb-secded").bits_per_value
    assert stored_bits_per_value("int12-golay", 128) == 43 * 24 / 128  # one padded word per row
    assert stored_bits_per_value("int12-golay", 96) == 8.0
    assert stored_bits_per_value("int4", 13) == 7 * 8 / 13


@pytest.mark.parametrize("mode,words,n", [("int4-hamming", 13, 7), ("int4-hamming84", 13, 8), ("int12-golay", 5, 24)])
def test_every_single_bit_error_is_corrected(mode: str, words: int, n: int) -> None:
    x = _x()
    ref = _int4(x)
    for bit in range(n):
        y, st = roundtrip(x, mode, flip_masks=_masks(x, words, [bit]))
        assert torch.equal(y, ref), f"bit {bit}"
        assert st["corrected"] == x.shape[0] * x.shape[1] * x.shape[2] * words and st["detected"] == 0
        assert st["bits_flipped"] == st["corrected"]


def test_unstored_bits_cannot_be_hit() -> None:
    x = _x()
    ref = _int4(x)
    for mode, bits in [("int4-hamming", [7]), ("int12-golay", [24, 30]), ("int4-msb-secded", [12, 15])]:
        y, st = roundtrip(x, mode, flip_masks=_masks(x, 13, bits))
        assert torch.equal(y, ref) and st["bits_flipped"] == 0, mode


def test_double_errors_detected_and_interpolated() -> None:
    x = _x((1, 2, 9, 13))
    ref = _int4(x).float()
    m = torch.zeros(x.shape, dtype=torch.int32)
    m[0, 1, 4, 6] = 0b101  # two errors in one SECDED word: token 4, channel 6
    y, st = roundtrip(x, "int4-hamming84", flip_masks=m)
    assert st["detected"] == 1 and st["corrected"] == 0 and st["bits_flipped"] == 2
    yi, sti = roundtrip(x, "int4-hamming84-interp", flip_masks=m)
    assert sti["interpolated"] == 1
    want = ((ref[0, 1, 3, 6] + ref[0, 1, 5, 6]) * 0.5).half()
    assert yi[0, 1, 4, 6] == want
    keep = torch.ones(x.shape, dtype=torch.bool)
    keep[0, 1, 4, 6] = False
    assert torch.equal(yi[keep], ref.half()[keep])


def test_golay_three_corrected_four_detected_whole_triple_interpolated() -> None:
    x = _x((1, 1, 6, 12))
    ref = _int4(x)
    y, st = roundtrip(x, "int12-golay", flip_masks=_masks(x, 4, [0, 13, 23]))
    assert torch.equal(y, ref) and st["corrected"] == 24
    y, st = roundtrip(x, "int12-golay", flip_masks=_masks(x, 1, [0, 5, 13, 23]))
    assert st["detected"] == 6 and st["corrected"] == 0


def test_adaptive_sink_rows_get_golay() -> None:
    x = _x((1, 2, 10, 12))
    # two errors per word: Golay corrects (sink rows), SECDED detects (other rows)
    y, st = roundtrip(x, "adaptive", sink_tokens=3, flip_masks=_masks(x, 12, [0, 1]))
    assert st["corrected"] == 2 * 3 * 4
    assert st["detected"] == 2 * 7 * 12
    assert torch.equal(y[:, :, :3], _int4(x)[:, :, :3])


def test_msb_secded_protects_high_bits_only() -> None:
    x = _x((1, 1, 4, 8), dtype=torch.float32)  # fp32 output: value differences are exact multiples of the step
    codes, scales = quantize_int4(x)
    ref = _int4(x)
    y, st = roundtrip(x, "int4-msb-secded", flip_masks=_masks(x, 4, [3]))
    assert torch.equal(y, ref) and st["corrected"] == 16
    y, st = roundtrip(x, "int4-msb-secded", flip_masks=_masks(x, 4, [8]))  # low bit 0 of value 2j, raw
    step = scales.float().repeat_interleave(8, -1)
    assert st["corrected"] == 0 and torch.equal((y.float() - ref.float()).abs()[..., 0::2], step[..., 0::2])
    assert torch.equal(y[..., 1::2], ref[..., 1::2])


@pytest.mark.parametrize("mode", ["int4", "int4-hamming84-interp", "int12-golay", "int4-msb-secded"])
def test_faults_deterministic_and_rate(mode: str, device: str) -> None:
    x = _x((2, 4, 32, 16)).to(device)
    a, sa = roundtrip(x, mode, ber=0.01, seed=5)
    b, sb = roundtrip(x, mode, ber=0.01, seed=5)
    c, sc = roundtrip(x, mode, ber=0.01, seed=6)
    assert torch.equal(a, b) and sa == sb and (sa != sc or not torch.equal(a, c))
    total = x.numel() * stored_bits_per_value(mode, 16)
    assert abs(sa["bits_flipped"] - 0.01 * total) <= 5 * math.sqrt(0.01 * total) + 1
    burst, sbu = roundtrip(x, mode, ber=0.01, seed=5, error_model="burst", burst_len=3)
    assert sbu["bits_flipped"] > 0


def test_scale_faults_option() -> None:
    x = _x((1, 2, 50, 8))
    _, base = roundtrip(x, "int4-hamming84", ber=0.05, seed=3)
    y, st = roundtrip(x, "int4-hamming84", ber=0.05, seed=3, scale_faults=True)
    assert st["bits_flipped"] > base["bits_flipped"]
    assert roundtrip(x, "int4-hamming84", ber=0.0, seed=3, scale_faults=True)[1]["bits_flipped"] == 0


def test_bad_arguments_raise() -> None:
    x = _x()
    with pytest.raises(ValueError, match="unknown cache mode 'int5'"):
        roundtrip(x, "int5")
    with pytest.raises(ValueError, match=r"\[B, H, T, D\]"):
        roundtrip(x[0], "int4")
    with pytest.raises(ValueError, match="ber=2"):
        roundtrip(x, "int4", ber=2)
    with pytest.raises(ValueError, match="error_model|model='x'"):
        roundtrip(x, "int4", error_model="x")
    with pytest.raises(ValueError, match="flip_masks"):
        roundtrip(x, "int4", flip_masks=torch.zeros(x.shape, dtype=torch.int64))
    with pytest.raises(ValueError, match="window=9"):
        roundtrip(x, "int4-hamming84-interp", window=9)
    with pytest.raises(ValueError, match="sink_tokens=-1"):
        roundtrip(x, "adaptive", sink_tokens=-1)
    with pytest.raises(ValueError, match="group_size=5"):
        roundtrip(x, "int4", group_size=5)
