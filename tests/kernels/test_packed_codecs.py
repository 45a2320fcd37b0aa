"""The aligned-unit packed decoder (``units=True``) against the group decoder and the torch layouts, bit for bit.

Both decoders read the same stored layouts and draw the same faults (``kernels.faults`` group law, keyed by
the global stored word index); the unit decoder holds whole aligned groups of four words per lane. Shapes
cover several programs, Hamming(8,4)'s half group at the end (an odd number of output words), rows of one
and two quads, and rows the unit decoder cannot take (Hamming(7,4) n=32, Golay n=24: group decoder).
"""

from __future__ import annotations

import pytest
import torch

from ecc_kv import layouts
from kernels.faults import inject_triton
from kernels.packed_codecs import decode_packed, encode_packed

CASES = [  # (codec, n, rows, units per program)
    ("hamming84", 72, 9, 32),  # 81 output words: 40 whole groups over two programs, then the half group
    ("hamming84", 128, 3, 64),
    ("hamming74", 128, 9, 8),  # one quad per row, two programs
    ("hamming74", 256, 5, 32),  # two quads per row
    ("hamming74", 32, 3, 32),  # no whole quad per row: group decoder
    ("golay2412", 96, 9, 8),
    ("golay2412", 192, 5, 32),
    ("golay2412", 24, 4, 32),
]


def _same(a: tuple, b: tuple, what: str) -> None:
    for x, y, part in zip(a, b, ("codes", "status", "counts"), strict=True):
        assert torch.equal(x.cpu(), y.cpu()), f"{what}: {part} differ"


def _stored(name: str, n: int, rows: int, device: str, garbage: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(n * 1000 + rows)
    if garbage:  # every byte random: most codewords carry a syndrome
        return torch.randint(0, 256, (rows, layouts.nbytes(name, n)), generator=g, dtype=torch.uint8).to(device)
    q = torch.randint(0, 16, (rows, n), generator=g, dtype=torch.uint8)
    return encode_packed(name, layouts.pack_int4(q).to(device), n)


@pytest.mark.parametrize("name,n,rows,block", CASES)
def test_units_equal_group_decoder_and_layouts(name: str, n: int, rows: int, block: int, device: str) -> None:
    for garbage in (False, True):
        stored = _stored(name, n, rows, device, garbage)
        ref_codes, ref_status = layouts.decode_stored(name, stored.cpu(), n)
        for with_status in (True, False):
            a = decode_packed(name, stored, n, with_status=with_status, units=True, config=(block, 1))
            b = decode_packed(name, stored, n, with_status=with_status, units=False)
            if with_status:
                _same(a, b, f"{name} garbage={garbage}")
                assert torch.equal(a[1].cpu(), ref_status)
            else:
                assert a[1] is None and torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
            assert torch.equal(a[0].cpu(), ref_codes)



@pytest.mark.parametrize("units", [False, True])
def test_hamming84_every_byte_in_every_lane(units: bool, device: str) -> None:
    # the word decoder merges two stored words' bytes out of value order and puts them back: every byte
    # value at every one of the 8 byte positions of a packed word (rows of 16 values: two aligned groups
    # per row for the unit decoder), against the torch layouts; with status, and counts alone
    r = torch.arange(256, dtype=torch.int64)[:, None]
    stored = ((r + 37 * torch.arange(16)) % 256).to(torch.uint8)  # [256, 16]: position j holds every value
    ref_codes, ref_status = layouts.decode_stored("hamming84", stored, 16)
    codes, status, counts = decode_packed("hamming84", stored.to(device), 16, units=units)
    assert torch.equal(codes.cpu(), ref_codes) and torch.equal(status.cpu(), ref_status)
    want = [int((ref_status == 1).sum()), int((ref_status == 2).sum())]
    assert counts.cpu().tolist() == want and min(want) > 0
    bare = decode_packed("hamming84", stored.to(device), 16, with_status=False, units=units)
    assert torch.equal(bare[0].cpu(), ref_codes) and bare[2].cpu().tolist() == want

# every case at BER 3e-3 (mostly the fast path, a few tiles on the full rule), bursts and 0.6 (more than
# 64 events per group: complement draws, every tile on the full rule) on one shape per codec
CHANNELS = [(*c, 0.003, "bsc") for c in CASES] + [(*CASES[i], 0.05, "burst") for i in (0, 2, 5)] + [
    ("hamming84", 72, 3, 32, 0.6, "bsc"), ("hamming74", 256, 2, 32, 0.6, "bsc"), ("golay2412", 192, 2, 32, 0.6, "bsc")
]


@pytest.mark.parametrize("name,n,rows,block,ber,model", CHANNELS)
def test_units_inject_decode_equals_group_decoder(name: str, n: int, rows: int, block: int, ber: float, model: str,
                                                  device: str) -> None:
    stored = _stored(name, n, rows, device, garbage=False)
    before = stored.clone()
    kw = {"ber": ber, "seed": 11, "model": model, "burst_len": 3, "stream": 2}
    a = decode_packed(name, stored, n, units=True, config=(block, 1), **kw)
    b = decode_packed(name, stored, n, units=False, **kw)
    _same(a, b, f"{name} ber={ber}")
    assert torch.equal(stored, before)  # the stored buffer is only read
    flipped, _ = inject_triton(stored.reshape(-1).view(torch.int32), 32, ber, 11, model, 3, stream=2)
    codes, status = layouts.decode_stored(name, flipped.view(torch.uint8).reshape(stored.shape).cpu(), n)
    assert torch.equal(a[0].cpu(), codes) and torch.equal(a[1].cpu(), status)
    if ber < 0.01:
        assert int(a[2][0]) > 0  # faults were corrected: the channel really ran


def test_units_accumulate_counts(device: str) -> None:
    stored = _stored("hamming84", 72, 9, device, garbage=True)
    counts = torch.zeros(2, dtype=torch.int32, device=device)
    one = decode_packed("hamming84", stored, 72, units=True, config=(32, 1))[2]
    decode_packed("hamming84", stored, 72, units=True, counts=counts, config=(32, 1))
    decode_packed("hamming84", stored, 72, units=True, counts=counts, config=(32, 1))
    assert torch.equal(counts, 2 * one) and int(one[1]) > 0
