"""Exhaustive checks of the torch codecs (the oracle): every message x every error pattern up to each guarantee."""

from __future__ import annotations

import itertools

import pytest
import torch

from ecc_kv.codecs import (
    GOLAY_B_ROWS,
    get_codec,
    golay_decode_algebraic,
    golay_parity,
    golay_syndrome_table,
)


def _patterns(nbits: int, weight: int) -> torch.Tensor:
    """All error patterns of exactly ``weight`` bits among ``nbits`` (int64)."""
    pats = [sum(1 << b for b in c) for c in itertools.combinations(range(nbits), weight)]
    return torch.tensor(pats, dtype=torch.int64)


def _golay_data(q: torch.Tensor) -> torch.Tensor:
    q = q.reshape(-1, 3).to(torch.int32)
    return q[:, 0] | (q[:, 1] << 4) | (q[:, 2] << 8)


def test_golay_code_is_the_extended_golay_code():
    d = torch.arange(4096, dtype=torch.int32)
    cw = d | (golay_parity(d) << 12)
    weights = sum((cw >> k) & 1 for k in range(24))
    assert int(weights[1:].min()) == 8  # minimum distance 8
    assert sorted(set(weights.tolist())) == [0, 8, 12, 16, 24]
    rows = torch.tensor(GOLAY_B_ROWS, dtype=torch.int32)
    assert torch.equal(golay_parity(rows), 1 << torch.arange(12, dtype=torch.int32))  # B*B = I


def test_contract_attributes_and_aliases():
    for name, bits, sym in [("hamming74", 7, 1), ("hamming84", 8, 1), ("golay2412", 24, 3), ("golay", 24, 3)]:
        c = get_codec(name)
        assert (c.codeword_bits, c.data_symbols) == (bits, sym)
    assert get_codec("golay").name == "golay2412"
    with pytest.raises(ValueError, match="hamming74, hamming84, golay2412"):
        get_codec("reed-solomon")
    with pytest.raises(ValueError, match="backend"):
        get_codec("hamming84", backend="cuda")
    with pytest.raises(TypeError, match="uint8"):
        get_codec("hamming84").encode(torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="multiple of data_symbols=3"):
        get_codec("golay").encode(torch.zeros(2, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="int32"):
        get_codec("golay").decode(torch.zeros(4, dtype=torch.uint8))


def test_encode_shapes_and_dtypes():
    q = torch.randint(0, 16, (2, 5, 12), dtype=torch.uint8)
    assert get_codec("hamming74").encode(q).dtype == torch.uint8
    g = get_codec("golay").encode(q)
    assert g.shape == (2, 5, 4) and g.dtype == torch.int32
    assert int(g.max()) < 2**24
    assert torch.equal(g & 0xFFF, _golay_data(q).reshape(2, 5, 4))  # systematic


@pytest.mark.parametrize("name", ["hamming74", "hamming84"])
def test_hamming_corrects_every_single_error(name):
    c = get_codec(name)
    q = torch.arange(16, dtype=torch.uint8)
    cw = c.encode(q)
    assert torch.equal(c.decode(cw)[0], q) and int(c.decode(cw)[1].sum()) == 0
    if name == "hamming74":
        assert int(cw.max()) < 128
    errs = 1 << torch.arange(c.codeword_bits, dtype=torch.uint8)
    bad = cw[:, None] ^ errs[None, :]  # [16, bits]
    q2, st = c.decode(bad)
    assert torch.equal(q2, q[:, None].expand_as(q2))
    assert bool((st == 1).all())
    assert c.counts(st) == {"corrected": 16 * c.codeword_bits, "detected": 0}


def test_hamming74_ignores_bit7():
    c = get_codec("hamming74")
    cw = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    q_hi, st_hi = c.decode(cw)
    q_lo, st_lo = c.decode(cw & 0x7F)
    assert torch.equal(q_hi, q_lo) and torch.equal(st_hi, st_lo)


def test_hamming84_detects_every_double_error_and_never_miscorrects():
    c = get_codec("hamming84")
    q = torch.arange(16, dtype=torch.uint8)
    cw = c.encode(q)
    errs = _patterns(8, 2).to(torch.uint8)  # 28 patterns
    bad = cw[:, None] ^ errs[None, :]  # [16, 28]
    q2, st = c.decode(bad)
    assert bool((st == 2).all())
    assert torch.equal(q2, bad & 15)  # detected: the received data bits, uncorrected
    assert c.counts(st) == {"corrected": 0, "detected": 16 * 28}


def test_golay_corrects_every_pattern_up_to_weight_3_for_every_message():
    c = get_codec("golay")
    d = torch.arange(4096, dtype=torch.int32)
    q = torch.stack([d & 15, (d >> 4) & 15, d >> 8], dim=-1).to(torch.uint8).reshape(-1)  # [3 * 4096]
    cw = c.encode(q)  # [4096]
    errs = torch.cat([_patterns(24, w) for w in range(4)]).to(torch.int32)  # [2325]
    assert errs.numel() == 2325
    bad = cw[:, None] ^ errs[None, :]  # [4096, 2325] ~ 9.5M codewords
    q2, st = c.decode(bad)
    assert torch.equal(_golay_data(q2).reshape(4096, 2325), d[:, None].expand(4096, 2325))
    assert bool((st[:, 0] == 0).all()) and bool((st[:, 1:] == 1).all())


def test_golay_detects_every_weight4_pattern():
    c = get_codec("golay")
    gen = torch.Generator().manual_seed(0)
    d = torch.cat([torch.tensor([0, 4095]), torch.randint(0, 4096, (30,), generator=gen)]).to(torch.int32)
    cw = d | (golay_parity(d) << 12)
    errs = _patterns(24, 4).to(torch.int32)
    assert errs.numel() == 10626
    bad = cw[:, None] ^ errs[None, :]
    q2, st = c.decode(bad)
    assert bool((st == 2).all())
    assert torch.equal(_golay_data(q2).reshape(bad.shape), bad & 0xFFF)  # raw received data


def test_golay_table_matches_algebraic_decoder_on_every_syndrome():
    s = torch.arange(4096, dtype=torch.int32)
    d_data = torch.randint(0, 4096, (4096,), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
    cw = d_data | ((golay_parity(d_data) ^ s) << 12)  # every syndrome once
    q, st = get_codec("golay").decode(cw)
    d_alg, st_alg = golay_decode_algebraic(cw)
    assert torch.equal(_golay_data(q), d_alg) and torch.equal(st, st_alg)
    table = golay_syndrome_table()
    assert int(((table >> 12) == 1).sum()) == 2324 and int(((table >> 12) == 2).sum()) == 1771


def test_golay_ignores_high_bits_of_the_int32_word():
    c = get_codec("golay")
    cw = torch.randint(0, 2**24, (500,), dtype=torch.int32)
    junk = torch.randint(-128, 127, (500,), dtype=torch.int32) << 24
    a, b = c.decode(cw), c.decode(cw | junk)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
