"""Fused quantize+encode and decode(+inject)+dequantize: fp16/bf16/fp32 K/V rows <-> stored ECC layouts, one pass.

Bit-for-bit twins (tests/kernels/test_fused_codec.py):

    quantize_encode(name, x, g)  == (layouts.encode_stored(name, pack_int4(codes), D), scales)
                                    with codes, scales = ecc_kv.quant.quantize_int4(x, g)
    decode_dequantize(name, stored, scales, D, g) == dequantize_int4(unpack_int4(decode_stored(...)), scales, g)

``name`` is a codec (hamming74 | hamming84 | golay2412) or ``int4`` (plain packed INT4, no code).
One program owns BLOCK_R whole rows (token x head), so the per-group scales are reduced in
registers; the tile is [BLOCK_R, units x words x 8 values] and the SWAR word functions of
``kernels.codecs`` encode / decode it, storing exactly the bytes of ``kernels.packed_codecs``.
Quantization reuses the device functions of ``kernels.quant`` (same rounding as ``ecc_kv.quant``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.codecs import (
    _count_swar,
    _i32,
    add_counts,
    golay_encode_group,
    golay_tables,
    hamming74_encode_group,
    hamming84_decode_word,
    hamming84_encode_word,
    status_counts,
)
from kernels.faults import event_probability, event_thresholds, group_masks, select4
from kernels.packed_codecs import _load_words, _xor_faults, read_golay_group, read_h74_group
from kernels.quant import int4_dequantize, int4_quantize, int4_scale
from kernels.tiles import join4, split4

FUSED_IDS = {"hamming74": 0, "hamming84": 1, "golay2412": 2, "int4": 3}
UNIT_VALUES = {"hamming74": 32, "hamming84": 8, "golay2412": 24, "int4": 8}
_UNIT_WORDS = {0: (4, 4), 1: (1, 1), 2: (3, 4), 3: (1, 1)}  # codec id -> (words per unit, padded to pow2)


def stored_row_bytes(name: str, d: int) -> int:
    """Stored bytes per row of ``d`` values."""
    return {"hamming74": 7 * d // 8, "hamming84": d, "golay2412": d, "int4": d // 2}[name]


@triton.jit
def _tile(R, D, NU, BLOCK_R: tl.constexpr, NU_P: tl.constexpr, UW: tl.constexpr, UWP: tl.constexpr):
    """Index tile of one program: rows [BR], in-row value positions [L], valid mask [BR, L], unit ids [BR*NU_P]."""
    L: tl.constexpr = NU_P * UWP * 8
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    lidx = tl.arange(0, L)
    u = lidx // (UWP * 8)
    k = (lidx // 8) % UWP
    pos = u * (UW * 8) + k * 8 + (lidx % 8)  # value index inside the row
    valid = (rows < R)[:, None] & ((u < NU) & (k < UW))[None, :]
    uu = tl.arange(0, NU_P)
    g = tl.reshape(rows[:, None] * NU + uu[None, :], [BLOCK_R * NU_P])  # global unit (= layout group) id
    gmask = tl.reshape((rows < R)[:, None] & (uu < NU)[None, :], [BLOCK_R * NU_P])
    return rows, pos, valid, g, gmask


@triton.jit
def _quant_encode_kernel(
    x_ptr, dst, scales_ptr, R, D, NU, GS,
    CODEC: tl.constexpr, NG: tl.constexpr, BLOCK_R: tl.constexpr, NU_P: tl.constexpr,
    UW: tl.constexpr, UWP: tl.constexpr,
):
    # x: [R, D] float -> dst: stored words (R rows of the layout), scales: [R, NG] fp16
    rows, pos, valid, g, gmask = _tile(R, D, NU, BLOCK_R, NU_P, UW, UWP)
    x = tl.load(x_ptr + rows[:, None] * D + pos[None, :], mask=valid, other=0.0).to(tl.float32)  # [BR, L]
    ax = tl.abs(x)
    if NG == 1:
        s16 = int4_scale(tl.max(ax, axis=1))
        tl.store(scales_ptr + rows, s16, mask=rows < R)
        s = s16.to(tl.float32)[:, None]
    else:
        grp = pos // GS
        s = tl.zeros_like(x)
        for gi in tl.static_range(NG):
            s16 = int4_scale(tl.max(tl.where(grp[None, :] == gi, ax, 0.0), axis=1))
            tl.store(scales_ptr + rows * NG + gi, s16, mask=rows < R)
            s = tl.where(grp[None, :] == gi, s16.to(tl.float32)[:, None], s)
    code = int4_quantize(x, s).to(tl.uint32)  # [BR, L] codes 0..15
    shift = ((tl.arange(0, NU_P * UWP * 8) % 8) * 4).to(tl.uint32)
    words = tl.sum(tl.reshape(code << shift[None, :], [BLOCK_R * NU_P, UWP, 8]), axis=2)  # [BU, UWP] packed INT4 (disjoint bits)
    if CODEC == 3:
        tl.store(dst + g, _i32(tl.reshape(words, [BLOCK_R * NU_P])), mask=gmask)
    elif CODEC == 1:
        lo, hi = hamming84_encode_word(tl.reshape(words, [BLOCK_R * NU_P]))
        o = g[:, None] * 2 + tl.arange(0, 2)[None, :]
        tl.store(dst + o, _i32(tl.join(lo, hi)), mask=gmask[:, None])
    elif CODEC == 0:
        w0, w1, w2, w3 = split4(words)
        q0, q1, q2 = hamming74_encode_group(w0, w1, w2, w3)
        row = g // NU
        j = g - row * NU
        base = row * (7 * NU)
        tl.store(dst + (base + 4 * j)[:, None] + tl.arange(0, 4)[None, :], _i32(words), mask=gmask[:, None])
        tl.store(dst + base + 4 * NU + j, _i32(q0), mask=gmask)
        tl.store(dst + base + 5 * NU + j, _i32(q1), mask=gmask)
        tl.store(dst + base + 6 * NU + j, _i32(q2), mask=gmask)
    else:
        w0, w1, w2, w3 = split4(words)
        p0, p1, p2 = golay_encode_group(w0, w1, w2)
        row = g // NU
        j = g - row * NU
        d = row * (6 * NU) + 3 * j
        p = d + 3 * NU
        tl.store(dst + d, _i32(w0), mask=gmask)
        tl.store(dst + d + 1, _i32(w1), mask=gmask)
        tl.store(dst + d + 2, _i32(w2), mask=gmask)
        tl.store(dst + p, _i32(p0), mask=gmask)
        tl.store(dst + p + 1, _i32(p1), mask=gmask)
        tl.store(dst + p + 2, _i32(p2), mask=gmask)


@triton.jit(do_not_specialize=["seed", "stream"])
def _decode_dequant_kernel(
    src, scales_ptr, out_ptr, cnt_ptr, table_ptr, thr_ptr, R, D, NU, GS, seed, stream,
    CODEC: tl.constexpr, NG: tl.constexpr, BLOCK_R: tl.constexpr, NU_P: tl.constexpr,
    UW: tl.constexpr, UWP: tl.constexpr, INJECT: tl.constexpr, BURST_LEN: tl.constexpr,
):
    # src: stored words (R rows) + scales [R, NG] fp16 -> out: [R, D]; cnt: int32 [2] corrected, detected
    rows, pos, valid, g, gmask = _tile(R, D, NU, BLOCK_R, NU_P, UW, UWP)
    BU: tl.constexpr = BLOCK_R * NU_P
    if CODEC == 3:
        w = _load_words(src, g, gmask, seed, stream, thr_ptr, INJECT, BURST_LEN)
        words = tl.reshape(w, [BU, 1])
        n_corr = tl.zeros([], tl.int32)
        n_det = n_corr
    elif CODEC == 1:
        if INJECT:  # the pair (2g, 2g + 1) never crosses a group of four words: one group draw per pair
            lo = tl.load(src + 2 * g, mask=gmask, other=0)
            hi = tl.load(src + 2 * g + 1, mask=gmask, other=0)
            m0, m1, m2, m3 = group_masks(seed, g >> 1, stream, thr_ptr, BURST_LEN)
            r = 2 * (g & 1)
            m_lo, m_hi = select4(m0, m1, m2, m3, r), select4(m0, m1, m2, m3, r + 1)
            lo, hi = _xor_faults(lo, gmask, m_lo), _xor_faults(hi, gmask, m_hi)
        else:
            o = g[:, None] * 2 + tl.arange(0, 2)[None, :]
            lo, hi = tl.split(_load_words(src, o, gmask[:, None], seed, stream, thr_ptr, INJECT, BURST_LEN))
        w, corr, det = hamming84_decode_word(lo, hi, False)
        words = tl.reshape(w, [BU, 1])
        n_corr = tl.sum(_count_swar(corr).to(tl.int32), axis=0)
        n_det = tl.sum(_count_swar(det).to(tl.int32), axis=0)
    elif CODEC == 0:
        w0, w1, w2, w3, f0, f1, f2, f3 = read_h74_group(src, g, NU, gmask, seed, stream, thr_ptr, INJECT, BURST_LEN)
        words = join4(w0, w1, w2, w3)
        n_corr = tl.sum((_count_swar(f0) + _count_swar(f1) + _count_swar(f2) + _count_swar(f3)).to(tl.int32), axis=0)
        n_det = n_corr * 0
    else:
        o0, o1, o2, sa, sb = read_golay_group(src, g, NU, gmask, seed, stream, thr_ptr, table_ptr, False, INJECT,
                                              BURST_LEN)
        words = join4(o0, o1, o2, o2)
        n_corr, n_det = status_counts(sa, sb)
    shift = (tl.arange(0, 8) * 4).to(tl.uint32)
    code = tl.reshape((words[:, :, None] >> shift[None, None, :]) & 15, [BLOCK_R, NU_P * UWP * 8]).to(tl.int32)
    if NG == 1:
        s = tl.load(scales_ptr + rows, mask=rows < R, other=0.0).to(tl.float32)[:, None]
    else:
        grp = pos // GS
        s = tl.load(scales_ptr + rows[:, None] * NG + grp[None, :], mask=valid, other=0.0).to(tl.float32)
    y = int4_dequantize(code, s)
    tl.store(out_ptr + rows[:, None] * D + pos[None, :], y.to(out_ptr.dtype.element_ty), mask=valid)
    add_counts(cnt_ptr, n_corr, n_det)


def _geometry(name: str, d: int, group_size: int | None) -> tuple[int, int, int, int, int, int, int, int]:
    """(codec id, group size, groups per row, units per row, padded units, words per unit, padded, BLOCK_R)."""
    if name not in FUSED_IDS:
        raise ValueError(f"unknown layout {name!r}; choose one of: {', '.join(FUSED_IDS)}")
    uv = UNIT_VALUES[name]
    if d <= 0 or d % uv:
        raise ValueError(f"head dim D={d} must be a positive multiple of {uv} for the fused {name} kernels")
    gs = d if group_size is None else group_size
    if gs <= 0 or d % gs:
        raise ValueError(f"group_size={group_size} must be a positive divisor of D={d}")
    cid = FUSED_IDS[name]
    uw, uwp = _UNIT_WORDS[cid]
    nu = d // uv
    nu_p = triton.next_power_of_2(nu)
    block_r = max(1, 4096 // (nu_p * uwp * 8))
    return cid, gs, d // gs, nu, nu_p, uw, uwp, block_r


def quantize_encode(name: str, x: torch.Tensor, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [..., D]`` -> (stored uint8 ``[..., stored_row_bytes(D)]``, fp16 scales ``[..., D // G]``) in one pass."""
    d = x.shape[-1]
    cid, gs, ng, nu, nu_p, uw, uwp, block_r = _geometry(name, d, group_size)
    x2 = x.reshape(-1, d).contiguous()  # [R, D]
    r = x2.shape[0]
    stored = torch.empty(r, stored_row_bytes(name, d), dtype=torch.uint8, device=x.device)
    scales = torch.empty(r, ng, dtype=torch.float16, device=x.device)
    if stored.numel() >= 2**31 or x2.numel() >= 2**31:
        raise ValueError(f"x has {x2.numel()} values; the kernels index in int32")
    if r:
        _quant_encode_kernel[(triton.cdiv(r, block_r),)](
            x2, stored.view(-1).view(torch.int32), scales, r, d, nu, gs,
            CODEC=cid, NG=ng, BLOCK_R=block_r, NU_P=nu_p, UW=uw, UWP=uwp,
        )
    return stored.reshape(*x.shape[:-1], -1), scales.reshape(*x.shape[:-1], ng)


def decode_dequantize(
    name: str,
    stored: torch.Tensor,
    scales: torch.Tensor,
    d: int,
    group_size: int | None = None,
    dtype: torch.dtype = torch.float16,
    *,
    ber: float = 0.0,
    seed: int = 0,
    model: str = "bsc",
    burst_len: int = 2,
    stream: int = 0,
    counts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored rows + fp16 scales -> (values ``[..., d]`` in ``dtype``, int32 [2] corrected/detected counts).

    ``ber > 0`` injects faults into the stored words on the fly (same stream as
    ``kernels.packed_codecs.decode_packed``: global stored int32 word index).
    """
    cid, gs, ng, nu, nu_p, uw, uwp, block_r = _geometry(name, d, group_size)
    rb = stored_row_bytes(name, d)
    if stored.dtype != torch.uint8 or stored.shape[-1] != rb:
        raise ValueError(f"stored must be uint8 rows of {rb} bytes for {name} D={d}, got {stored.dtype} {tuple(stored.shape)}")
    lead = stored.shape[:-1]
    s2 = stored.reshape(-1, rb).contiguous()
    r = s2.shape[0]
    sc = scales.reshape(r, ng).to(torch.float16).contiguous()
    out = torch.empty(r, d, dtype=dtype, device=stored.device)
    if counts is None:
        counts = torch.zeros(2, dtype=torch.int32, device=stored.device)
    if r:
        inject = ber > 0
        thr = event_thresholds(event_probability(ber, model, burst_len), 32, stored.device) if inject else counts
        _decode_dequant_kernel[(triton.cdiv(r, block_r),)](
            s2.view(-1).view(torch.int32), sc, out, counts, golay_tables(stored.device), thr, r, d, nu, gs, seed, stream,
            CODEC=cid, NG=ng, BLOCK_R=block_r, NU_P=nu_p, UW=uw, UWP=uwp,
            INJECT=inject, BURST_LEN=1 if model == "bsc" else burst_len,
        )
    return out.reshape(*lead, d), counts
