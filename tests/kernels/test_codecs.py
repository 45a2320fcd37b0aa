"""Triton codecs vs the torch oracle, bit for bit (codes and status), on awkward shapes and garbage codewords."""

from __future__ import annotations

import zlib

import pytest
import torch

from ecc_kv import layouts
from ecc_kv.codecs import get_codec, golay_parity
from kernels.codecs import golay_tables
from kernels.packed_codecs import decode_packed, encode_packed

NAMES = ["hamming74", "hamming84", "golay2412"]


def _assert_same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if not torch.equal(a.cpu(), b.cpu()):
        bad = (a.cpu() != b.cpu()).nonzero()[:5].tolist()
        raise AssertionError(f"{what}: first mismatches at {bad}: {a.cpu()[tuple(bad[0])]} vs {b.cpu()[tuple(bad[0])]}")


def test_table_is_built_independently_and_equal(device):
    from ecc_kv.codecs import golay_syndrome_table

    _assert_same(golay_tables(device)[:4096], golay_syndrome_table(), "golay table")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(3, 5, 37), (1, 1), (2, 1031)])
def test_logical_encode_decode_agree(name, shape, device):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{name}{shape}".encode()))
    ref, tri = get_codec(name), get_codec(name, backend="triton")
    shape = (*shape[:-1], shape[-1] * ref.data_symbols)
    q = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).to(device)  # high nibble must be ignored
    cw = tri.encode(q)
    _assert_same(cw, ref.encode(q.cpu()), f"{name} encode")
    if name == "golay2412":
        garbage = torch.randint(-(2**31), 2**31 - 1, cw.shape, generator=gen, dtype=torch.int32)
    else:
        garbage = torch.randint(0, 256, cw.shape, generator=gen, dtype=torch.uint8)
    for words in (cw.cpu(), garbage):
        q_ref, st_ref = ref.decode(words)
        q_tri, st_tri = tri.decode(words.to(device))
        _assert_same(q_tri, q_ref, f"{name} decode codes")
        _assert_same(st_tri, st_ref, f"{name} decode status")


@pytest.mark.parametrize("name", ["hamming74", "hamming84"])
def test_hamming_every_byte(name, device):
    words = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    a = get_codec(name).decode(words)
    b = get_codec(name, backend="triton").decode(words.to(device))
    _assert_same(b[0], a[0], "codes")
    _assert_same(b[1], a[1], "status")


def test_golay_every_syndrome(device):
    d = torch.randint(0, 4096, (4096,), generator=torch.Generator().manual_seed(3), dtype=torch.int32)
    cw = d | ((golay_parity(d) ^ torch.arange(4096, dtype=torch.int32)) << 12)
    a = get_codec("golay").decode(cw)
    b = get_codec("golay", backend="triton").decode(cw.to(device))
    _assert_same(b[0], a[0], "codes")
    _assert_same(b[1], a[1], "status")


ROWS = {"hamming74": 3 * 32, "hamming84": 7 * 8, "golay2412": 5 * 24}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lead", [(1,), (3, 5)])
def test_packed_encode_decode_agree_with_layouts(name, lead, device):
    n = ROWS[name]
    gen = torch.Generator().manual_seed(len(lead) * 7 + n)
    q = torch.randint(0, 16, (*lead, n), generator=gen, dtype=torch.uint8)
    packed = layouts.pack_int4(q)
    stored = encode_packed(name, packed.to(device), n)
    _assert_same(stored, layouts.encode_stored(name, packed, n), f"{name} packed encode")
    garbage = torch.randint(0, 256, stored.shape, generator=gen, dtype=torch.uint8)
    # clean, garbage, and sparse flips (mostly correctable)
    flips = (torch.rand(stored.shape, generator=gen) < 0.05).to(torch.uint8) << torch.randint(0, 8, stored.shape, generator=gen, dtype=torch.uint8)
    for s in (stored.cpu(), garbage, stored.cpu() ^ flips):
        p_ref, st_ref = layouts.decode_stored(name, s, n)
        p_tri, st_tri, counts = decode_packed(name, s.to(device), n)
        _assert_same(p_tri, p_ref, f"{name} packed decode")
        _assert_same(st_tri, st_ref, f"{name} packed status")
        c = get_codec(name).counts(st_ref)
        assert counts.tolist() == [c["corrected"], c["detected"]]
        p2, none, counts2 = decode_packed(name, s.to(device), n, with_status=False)
        assert none is None and counts2.tolist() == counts.tolist()
        _assert_same(p2, p_ref, f"{name} packed decode without status")
    _assert_same(decode_packed(name, stored, n)[0], packed, f"{name} round trip")


def test_golay_algebraic_kernel_matches_table(device):
    n = 48
    gen = torch.Generator().manual_seed(11)
    garbage = torch.randint(0, 256, (40, n), generator=gen, dtype=torch.uint8).to(device)
    a = decode_packed("golay2412", garbage, n)
    b = decode_packed("golay2412", garbage, n, algebraic=True)
    _assert_same(b[0], a[0], "codes")
    _assert_same(b[1], a[1], "status")


def test_packed_launchers_reject_bad_rows(device):
    with pytest.raises(ValueError, match="multiple of 32"):
        encode_packed("hamming74", torch.zeros(1, 24, dtype=torch.uint8, device=device), 48)
    with pytest.raises(ValueError, match="last dim"):
        decode_packed("hamming84", torch.zeros(1, 10, dtype=torch.uint8, device=device), 16)
    with pytest.raises(ValueError, match="multiple of 24"):
        layouts.encode_stored("golay", torch.zeros(1, 6, dtype=torch.uint8), 12, backend="triton")


@pytest.mark.parametrize("name,n", [("hamming84", 8), ("hamming74", 32), ("golay2412", 24)])
def test_packed_inject_decode_equals_inject_then_decode(name, n, device):
    from kernels.faults import inject_triton

    q = torch.randint(0, 16, (3, n), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    stored = encode_packed(name, layouts.pack_int4(q).to(device), n)
    fused = decode_packed(name, stored, n, ber=0.05, seed=9, model="burst", burst_len=3)
    flipped, _ = inject_triton(stored.reshape(-1).view(torch.int32), 32, 0.05, 9, "burst", 3)
    ref = decode_packed(name, flipped.view(torch.uint8).reshape(stored.shape), n)
    for a, b, what in zip(fused, ref, ("codes", "status", "counts"), strict=True):
        _assert_same(a, b, what)
