"""Packed (physical) encode / decode: plain packed INT4 <-> the stored layouts at the nominal code rate.

The layouts (documented in ``ecc_kv/layouts.py``, whose torch functions are the oracle) per row of
``n`` INT4 values:

- hamming84: one byte per value (the codeword), ``n`` bytes.
- hamming74: per row ``[data n/2 bytes | Q0 n/8 | Q1 n/8 | Q2 n/8]``; the data plane is the plain
  packed INT4 row, Q_b word j holds the parity triples of codes 32j+8b..32j+8b+7 (nibble i, bits 0-2)
  and bit b of the parity triple of code 32j+24+i (nibble i, bit 3). 7 bits per value.
- golay2412: per row ``[data n/2 bytes | parity n/2 bytes]``; codeword c's 12 data bits are bits
  12c..12c+11 of the data plane (the plain packed INT4 row), its 12 parity bits the same bits of the
  parity plane. 24 bits per 3 values.

One program handles BLOCK aligned groups (8, 32 or 24 values) with 128-bit loads where the group is
a power of two, SWAR arithmetic on uint32 words, and int32 indexing. Decoders add their corrected /
detected counts to ``counts[0:2]`` with one atomic per program, and optionally write the status
byte of every codeword.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.codecs import (
    CODEC_IDS,
    GROUP_VALUES,
    _count_swar,
    _i32,
    _spread16,
    _u32,
    add_counts,
    golay_decode_group,
    golay_encode_group,
    golay_tables,
    hamming74_decode_group,
    hamming74_encode_group,
    hamming84_decode_word,
    hamming84_encode_word,
    status_counts,
)
from kernels.faults import event_probability, event_thresholds, flip_mask, group_masks, run_masks, select4
from kernels.tiles import join4, split4

# launch configs per codec id: (groups per program, warps), from a sweep on an H100 at 64M values
# (docs/codecs.md): encoders with strided parity stores like small programs, decoders large ones.
TUNING_ENCODE: dict[int, tuple[int, int]] = {0: (128, 4), 1: (1024, 4), 2: (128, 4)}
TUNING_DECODE: dict[int, tuple[int, int]] = {0: (512, 4), 1: (2048, 4), 2: (512, 4)}
# with fused fault injection, small programs win for the layouts whose words are drawn per run (their
# tile-level fault tests stall fewer warps); best of a (block, warps) sweep at 64M values, BER 1e-3,
# H100 (docs/codecs.md)
TUNING_INJECT_DECODE: dict[int, tuple[int, int]] = {0: (64, 1), 1: (512, 4), 2: (64, 1)}


@triton.jit
def _load_words(ptr, idx, valid, seed, stream, thr_ptr, INJECT: tl.constexpr, BURST_LEN: tl.constexpr):
    """Stored int32 words at ``idx`` as uint32, with the fault channel applied when INJECT (global word index = idx)."""
    x = tl.load(ptr + idx, mask=valid, other=0)
    if INJECT:
        # callers pass 1-D index tiles when INJECT, the shape ``inject_triton`` draws on (a 2-D tile gave
        # different masks on the H100 in our first run; reshaping around flip_mask made it 4x slower)
        m = flip_mask(seed, idx.to(tl.int64), stream, thr_ptr, 32, BURST_LEN)
        x = x ^ tl.where(valid, m, 0)
    return _u32(x)


@triton.jit
def _xor_faults(x, valid, m):
    """Loaded int32 words ``x`` XORed with fault masks ``m`` (only where valid), as uint32."""
    return _u32(x ^ tl.where(valid, m, 0))


@triton.jit
def read_h74_group(src, g, GPR, mask, seed, stream, thr_ptr, INJECT: tl.constexpr, BURST_LEN: tl.constexpr):
    """Load and correct Hamming(7,4) groups ``g`` of the stored layout (rows of ``GPR`` groups).

    A row holds its 4 GPR data words, then three parity planes of GPR words each.
    Returns the 4 corrected data words and 4 words of per-codeword correction flags.
    """
    row = g // GPR
    j = g - row * GPR
    base = row * (7 * GPR)
    d0 = base + 4 * j
    if INJECT:  # four 1-D loads (issued before the masks); the run of four data words costs one or two draws
        x0 = tl.load(src + d0, mask=mask, other=0)
        x1 = tl.load(src + d0 + 1, mask=mask, other=0)
        x2 = tl.load(src + d0 + 2, mask=mask, other=0)
        x3 = tl.load(src + d0 + 3, mask=mask, other=0)
        m0, m1, m2, m3 = run_masks(seed, d0, stream, thr_ptr, BURST_LEN)
        x = join4(_xor_faults(x0, mask, m0), _xor_faults(x1, mask, m1), _xor_faults(x2, mask, m2),
                   _xor_faults(x3, mask, m3))
    else:
        x = _load_words(src, d0[:, None] + tl.arange(0, 4)[None, :], mask[:, None], seed, stream, thr_ptr, INJECT, BURST_LEN)
    q0 = _load_words(src, base + 4 * GPR + j, mask, seed, stream, thr_ptr, INJECT, BURST_LEN)
    q1 = _load_words(src, base + 5 * GPR + j, mask, seed, stream, thr_ptr, INJECT, BURST_LEN)
    q2 = _load_words(src, base + 6 * GPR + j, mask, seed, stream, thr_ptr, INJECT, BURST_LEN)
    w0, w1, w2, w3 = split4(x)
    return hamming74_decode_group(w0, w1, w2, w3, q0, q1, q2)


@triton.jit
def read_golay_group(src, g, GPR, mask, seed, stream, thr_ptr, table_ptr,
                     ALGEBRAIC: tl.constexpr, INJECT: tl.constexpr, BURST_LEN: tl.constexpr):
    """Load and correct Golay groups ``g`` (8 codewords each) of the stored layout (rows of ``GPR`` groups).

    A row holds its 3 GPR data words, then 3 GPR parity words. Returns the 3 corrected data words
    and the two status words (``golay_decode_group``).
    """
    row = g // GPR
    j = g - row * GPR
    d = row * (6 * GPR) + 3 * j
    p = d + 3 * GPR
    w0 = tl.load(src + d, mask=mask, other=0)
    w1 = tl.load(src + d + 1, mask=mask, other=0)
    w2 = tl.load(src + d + 2, mask=mask, other=0)
    p0 = tl.load(src + p, mask=mask, other=0)
    p1 = tl.load(src + p + 1, mask=mask, other=0)
    p2 = tl.load(src + p + 2, mask=mask, other=0)
    if INJECT:  # two runs of three words: at most four group draws for six words
        md0, md1, md2, _ = run_masks(seed, d, stream, thr_ptr, BURST_LEN)
        mp0, mp1, mp2, _ = run_masks(seed, p, stream, thr_ptr, BURST_LEN)
        w0, w1, w2 = _xor_faults(w0, mask, md0), _xor_faults(w1, mask, md1), _xor_faults(w2, mask, md2)
        p0, p1, p2 = _xor_faults(p0, mask, mp0), _xor_faults(p1, mask, mp1), _xor_faults(p2, mask, mp2)
    else:
        w0, w1, w2, p0, p1, p2 = _u32(w0), _u32(w1), _u32(w2), _u32(p0), _u32(p1), _u32(p2)
    return golay_decode_group(w0, w1, w2, p0, p1, p2, table_ptr, ALGEBRAIC)


@triton.jit
def _encode_packed_kernel(src, dst, NG, GPR, CODEC: tl.constexpr, BLOCK: tl.constexpr):
    # src: packed INT4 words, group g at words [W*g, W*g+W) (W = 4 / 1 / 3); dst: stored words
    g = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = g < NG
    if CODEC == 1:
        w = _u32(tl.load(src + g, mask=mask, other=0))
        lo, hi = hamming84_encode_word(w)
        o = g[:, None] * 2 + tl.arange(0, 2)[None, :]
        tl.store(dst + o, _i32(tl.join(lo, hi)), mask=o < 2 * NG)
    elif CODEC == 0:
        row = g // GPR
        j = g - row * GPR
        i4 = g[:, None] * 4 + tl.arange(0, 4)[None, :]
        m4 = i4 < 4 * NG
        x = _u32(tl.load(src + i4, mask=m4, other=0))  # [B, 4]
        w0, w1, w2, w3 = split4(x)
        q0, q1, q2 = hamming74_encode_group(w0, w1, w2, w3)
        base = row * (7 * GPR)
        tl.store(dst + (base + 4 * j)[:, None] + tl.arange(0, 4)[None, :], _i32(x), mask=m4)
        tl.store(dst + base + 4 * GPR + j, _i32(q0), mask=mask)
        tl.store(dst + base + 5 * GPR + j, _i32(q1), mask=mask)
        tl.store(dst + base + 6 * GPR + j, _i32(q2), mask=mask)
    else:
        row = g // GPR
        j = g - row * GPR
        w0 = _u32(tl.load(src + 3 * g, mask=mask, other=0))
        w1 = _u32(tl.load(src + 3 * g + 1, mask=mask, other=0))
        w2 = _u32(tl.load(src + 3 * g + 2, mask=mask, other=0))
        p0, p1, p2 = golay_encode_group(w0, w1, w2)
        d = row * (6 * GPR) + 3 * j
        p = d + 3 * GPR
        tl.store(dst + d, _i32(w0), mask=mask)
        tl.store(dst + d + 1, _i32(w1), mask=mask)
        tl.store(dst + d + 2, _i32(w2), mask=mask)
        tl.store(dst + p, _i32(p0), mask=mask)
        tl.store(dst + p + 1, _i32(p1), mask=mask)
        tl.store(dst + p + 2, _i32(p2), mask=mask)


@triton.jit(do_not_specialize=["seed", "stream"])
def _decode_packed_kernel(
    src, dst, st_ptr, cnt_ptr, table_ptr, thr_ptr, NG, GPR, seed, stream,
    CODEC: tl.constexpr, BLOCK: tl.constexpr, WRITE_STATUS: tl.constexpr, ALGEBRAIC: tl.constexpr,
    INJECT: tl.constexpr, BURST_LEN: tl.constexpr,
):
    # src: stored words; dst: packed INT4 words; st_ptr: status bytes as words; cnt_ptr: int32[2]
    g = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = g < NG
    if CODEC == 1 and INJECT:
        # whole aligned groups of four stored words (two output words) per row: one fault draw per group
        grp = tl.program_id(0) * (BLOCK // 2) + tl.arange(0, BLOCK // 2)
        col = tl.arange(0, 4)[None, :]
        o4 = grp[:, None] * 4 + col  # [B/2, 4] stored word index
        v4 = o4 < 2 * NG
        x = tl.load(src + o4, mask=v4, other=0)
        m0, m1, m2, m3 = group_masks(seed, grp, stream, thr_ptr, BURST_LEN)
        x = _u32(x ^ tl.where(v4, select4(m0[:, None], m1[:, None], m2[:, None], m3[:, None], col), 0))
        lo, hi = tl.split(tl.reshape(x, [BLOCK // 2, 2, 2]))  # [B/2, 2]: output words 2 grp + (0, 1)
        w, corr, det = hamming84_decode_word(lo, hi)
        o2 = grp[:, None] * 2 + tl.arange(0, 2)[None, :]
        tl.store(dst + o2, _i32(w), mask=o2 < NG)
        if WRITE_STATUS:
            st = corr | (det << 1)
            st4 = tl.reshape(tl.join(_spread16(st), _spread16(st >> 16)), [BLOCK // 2, 4])
            tl.store(st_ptr + o4, _i32(st4), mask=v4)
        n_corr = tl.sum(tl.sum(_count_swar(corr).to(tl.int32), axis=1), axis=0)
        n_det = tl.sum(tl.sum(_count_swar(det).to(tl.int32), axis=1), axis=0)
    elif CODEC == 1:
        o = tl.program_id(0) * (2 * BLOCK) + tl.arange(0, 2 * BLOCK)  # 1-D: 128-bit loads
        x = _load_words(src, o, o < 2 * NG, seed, stream, thr_ptr, INJECT, BURST_LEN)
        lo, hi = tl.split(tl.reshape(x, [BLOCK, 2]))
        w, corr, det = hamming84_decode_word(lo, hi)
        tl.store(dst + g, _i32(w), mask=mask)
        if WRITE_STATUS:
            st = corr | (det << 1)
            st2 = tl.reshape(tl.join(_spread16(st), _spread16(st >> 16)), [2 * BLOCK])
            tl.store(st_ptr + o, _i32(st2), mask=o < 2 * NG)
        n_corr = tl.sum(_count_swar(corr).to(tl.int32), axis=0)
        n_det = tl.sum(_count_swar(det).to(tl.int32), axis=0)
    elif CODEC == 0:
        m4 = (g < NG)[:, None] & (tl.arange(0, 4) < 4)[None, :]
        w0, w1, w2, w3, f0, f1, f2, f3 = read_h74_group(src, g, GPR, mask, seed, stream, thr_ptr, INJECT, BURST_LEN)
        tl.store(dst + g[:, None] * 4 + tl.arange(0, 4)[None, :], _i32(join4(w0, w1, w2, w3)), mask=m4)
        if WRITE_STATUS:
            s8 = g * 8
            tl.store(st_ptr + s8, _i32(_spread16(f0)), mask=mask)
            tl.store(st_ptr + s8 + 1, _i32(_spread16(f0 >> 16)), mask=mask)
            tl.store(st_ptr + s8 + 2, _i32(_spread16(f1)), mask=mask)
            tl.store(st_ptr + s8 + 3, _i32(_spread16(f1 >> 16)), mask=mask)
            tl.store(st_ptr + s8 + 4, _i32(_spread16(f2)), mask=mask)
            tl.store(st_ptr + s8 + 5, _i32(_spread16(f2 >> 16)), mask=mask)
            tl.store(st_ptr + s8 + 6, _i32(_spread16(f3)), mask=mask)
            tl.store(st_ptr + s8 + 7, _i32(_spread16(f3 >> 16)), mask=mask)
        n_corr = tl.sum((_count_swar(f0) + _count_swar(f1) + _count_swar(f2) + _count_swar(f3)).to(tl.int32), axis=0)
        n_det = n_corr * 0
    else:
        o0, o1, o2, sa, sb = read_golay_group(src, g, GPR, mask, seed, stream, thr_ptr, table_ptr, ALGEBRAIC, INJECT,
                                              BURST_LEN)
        tl.store(dst + 3 * g, _i32(o0), mask=mask)
        tl.store(dst + 3 * g + 1, _i32(o1), mask=mask)
        tl.store(dst + 3 * g + 2, _i32(o2), mask=mask)
        if WRITE_STATUS:
            tl.store(st_ptr + 2 * g, _i32(sa), mask=mask)
            tl.store(st_ptr + 2 * g + 1, _i32(sb), mask=mask)
        n_corr, n_det = status_counts(sa, sb)
    add_counts(cnt_ptr, n_corr, n_det)


def stored_nbytes(name: str, n: int) -> int:
    """Bytes of one stored row of ``n`` values (``n`` a multiple of ``GROUP_VALUES[name]``)."""
    return {"hamming74": 7 * n // 8, "hamming84": n, "golay2412": n}[name]


def _words(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.int32)


def _check_row(name: str, n: int, last: int, want: int, what: str) -> None:
    if name not in CODEC_IDS:
        raise ValueError(f"unknown codec {name!r}; choose one of: {', '.join(CODEC_IDS)}")
    gv = GROUP_VALUES[name]
    if n <= 0 or n % gv != 0:
        raise ValueError(f"row length n={n} must be a positive multiple of {gv} for the packed {name} kernels")
    if last != want:
        raise ValueError(f"{what} last dim is {last}, expected {want} for n={n} values of {name}")


def encode_packed(
    name: str, packed: torch.Tensor, n: int, out: torch.Tensor | None = None, config: tuple[int, int] | None = None
) -> torch.Tensor:
    """Plain packed INT4 ``[..., n/2]`` (uint8) -> stored layout ``[..., stored_nbytes(n)]`` (uint8)."""
    _check_row(name, n, packed.shape[-1], n // 2, "packed")
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed.dtype={packed.dtype} must be torch.uint8")
    cid, nb = CODEC_IDS[name], stored_nbytes(name, n)
    rows = packed.numel() // (n // 2)
    if out is None:
        out = torch.empty(*packed.shape[:-1], nb, dtype=torch.uint8, device=packed.device)
    if out.numel() >= 2**31:
        raise ValueError(f"{out.numel()} stored bytes exceed the int32 indexing of the kernels")
    gpr = n // GROUP_VALUES[name]
    ng = rows * gpr
    if ng:
        block, warps = config or TUNING_ENCODE[cid]
        _encode_packed_kernel[(triton.cdiv(ng, block),)](
            _words(packed), out.view(-1).view(torch.int32), ng, gpr, CODEC=cid, BLOCK=block, num_warps=warps
        )
    return out


def decode_packed(
    name: str,
    stored: torch.Tensor,
    n: int,
    *,
    with_status: bool = True,
    algebraic: bool = False,
    out: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
    ber: float = 0.0,
    seed: int = 0,
    model: str = "bsc",
    burst_len: int = 2,
    stream: int = 0,
    config: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Stored layout ``[..., stored_nbytes(n)]`` -> (packed INT4 ``[..., n/2]``, status ``[..., m]`` or None, counts).

    ``counts``: int32 [2] (corrected, detected) on the device, added to (pass one to accumulate);
    no host sync happens here. ``algebraic`` selects the algebraic Golay decoder. ``ber > 0`` fuses
    fault injection into the read: every stored int32 word (all 32 bits are stored bits in these
    layouts) is XORed with ``kernels.faults.flip_mask(seed, word index, stream)`` before decoding,
    the same faults as ``inject_triton(stored.view(int32), 32, ber, seed, model, burst_len)``; the
    stored buffer itself is not modified. ``config``: (groups per program, warps), default ``TUNING_DECODE``
    (``TUNING_INJECT_DECODE`` with injection).
    """
    _check_row(name, n, stored.shape[-1], stored_nbytes(name, n), "stored")
    if stored.dtype != torch.uint8:
        raise TypeError(f"stored.dtype={stored.dtype} must be torch.uint8")
    cid = CODEC_IDS[name]
    lead = stored.shape[:-1]
    rows = stored.numel() // stored_nbytes(name, n)
    dev = stored.device
    if out is None:
        out = torch.empty(*lead, n // 2, dtype=torch.uint8, device=dev)
    m = n // 3 if cid == 2 else n
    status = torch.empty(*lead, m, dtype=torch.uint8, device=dev) if with_status else None
    if counts is None:
        counts = torch.zeros(2, dtype=torch.int32, device=dev)
    if stored.numel() >= 2**31:
        raise ValueError(f"{stored.numel()} stored bytes exceed the int32 indexing of the kernels")
    gpr = n // GROUP_VALUES[name]
    ng = rows * gpr
    if ng:
        inject = ber > 0
        block, warps = config or (TUNING_INJECT_DECODE if inject else TUNING_DECODE)[cid]
        st = status.view(-1).view(torch.int32) if status is not None else counts
        blen = 1 if model == "bsc" else burst_len
        thr = event_thresholds(event_probability(ber, model, burst_len), 32, dev) if inject else counts
        _decode_packed_kernel[(triton.cdiv(ng, block),)](
            _words(stored), out.view(-1).view(torch.int32), st, counts, golay_tables(dev), thr, ng, gpr, seed, stream,
            CODEC=cid, BLOCK=block, WRITE_STATUS=with_status, ALGEBRAIC=algebraic, INJECT=inject, BURST_LEN=blen,
            num_warps=warps,
        )
    return out, status, counts
