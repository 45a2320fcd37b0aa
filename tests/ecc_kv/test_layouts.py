"""Stored layouts: exact byte counts at the nominal rate, pack/unpack round trips, systematic data planes."""

from __future__ import annotations

import pytest
import torch

from ecc_kv import layouts
from ecc_kv.codecs import get_codec


def test_exact_byte_counts_at_the_nominal_rate():
    assert layouts.nbytes("int4", 128) == 64
    assert layouts.nbytes("hamming74", 128) == 112  # 7 bits per value
    assert layouts.nbytes("hamming84", 128) == 128
    assert layouts.nbytes("golay2412", 96) == 96  # 24 bits per 3 values
    assert layouts.nbytes("golay", 3) == 24  # padded to 8 codewords
    assert layouts.nbytes("hamming74", 33) == 56
    assert layouts.nbytes("int4", 7) == 4
    for name in layouts.LAYOUTS:
        n = 24 * 32
        assert layouts.nbytes(name, n) * 8 == layouts.bits_per_value(name) * n
    with pytest.raises(ValueError, match="multiple of 3"):
        layouts.nbytes("golay2412", 10)
    with pytest.raises(ValueError, match="unknown codec"):
        layouts.nbytes("bch", 10)


@pytest.mark.parametrize("name", ["int4", "hamming74", "hamming84", "golay2412"])
@pytest.mark.parametrize("n", [3, 24, 39, 96, 129])
def test_pack_unpack_round_trip(name, n):
    if name == "golay2412" and n % 3:
        pytest.skip("golay rows are multiples of 3")
    gen = torch.Generator().manual_seed(n)
    q = torch.randint(0, 16, (2, 3, n), generator=gen, dtype=torch.uint8)
    words = q if name == "int4" else get_codec(name).encode(q)
    data = layouts.pack(name, words)
    assert data.dtype == torch.uint8 and data.shape == (2, 3, layouts.nbytes(name, n))
    assert torch.equal(layouts.unpack(name, data, n), words)


@pytest.mark.parametrize("name", ["hamming74", "golay2412"])
def test_data_plane_is_plain_int4(name):
    q = torch.randint(0, 16, (4, 96), dtype=torch.uint8)
    data = layouts.pack(name, get_codec(name).encode(q))
    assert torch.equal(data[..., :48], layouts.pack_int4(q))


def test_hamming74_parity_plane_bits():
    # the parity triple of code 24 + i of a group lands in bit 3 of nibble i of Q0, Q1, Q2 (bit b in Q_b)
    q = torch.zeros(1, 32, dtype=torch.uint8)
    q[0, 24 + 5] = 0b1011  # some code with a non-zero parity triple
    cw = get_codec("hamming74").encode(q)
    triple = int(cw[0, 29]) >> 4
    data = layouts.pack("hamming74", cw)
    for b in range(3):
        word = int.from_bytes(bytes(data[0, 16 + 4 * b : 20 + 4 * b].tolist()), "little")
        assert (word >> (4 * 5 + 3)) & 1 == (triple >> b) & 1


@pytest.mark.parametrize("name,n", [("hamming74", 32), ("hamming84", 8), ("golay2412", 24)])
def test_every_single_stored_bit_flip_is_corrected(name, n):
    q = torch.randint(0, 16, (1, n), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    packed = layouts.pack_int4(q)
    stored = layouts.encode_stored(name, packed, n)  # [1, B]
    nbits = stored.shape[-1] * 8
    idx = torch.arange(nbits)
    flips = torch.zeros(nbits, stored.shape[-1], dtype=torch.uint8)
    flips[idx, idx // 8] = (1 << (idx % 8)).to(torch.uint8)
    bad = stored ^ flips  # [nbits, B]: every stored bit flipped once
    out, status = layouts.decode_stored(name, bad, n)
    assert torch.equal(out, packed.expand_as(out))
    assert torch.equal((status == 1).sum(-1), torch.ones(nbits, dtype=torch.int64))


def test_unpack_rejects_wrong_size():
    with pytest.raises(ValueError, match="112 uint8 bytes"):
        layouts.unpack("hamming74", torch.zeros(1, 100, dtype=torch.uint8), 128)
