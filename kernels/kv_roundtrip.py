"""One fused Triton kernel for the KV protection round trip (twin: ``ecc_kv.kv_protect``, torch).

quantize -> encode -> inject -> decode -> interpolate -> dequantize, for a tile of BLOCK_T tokens x the
whole head dim of one (batch, head), in registers: x is read once and x_hat written once.

Layout: lanes are values (d in [0, D)); a lane whose value shares a stored word with others (INT4
pairs, Golay triples) recomputes that word from its partners' values (L1 hits), so tokens can switch
codec per row (adaptive) without reshaping. Faults come from ``kernels.faults.flip_mask`` keyed by
the global word index (token row * D + word in row), so every lane of a word and every recomputation
sees the same flips. Counters count each word once (its first lane).

Interpolation needs the decoded neighbour tokens, which live in other rows of the tile or in other
programs: the kernel recomputes the whole pipeline for rows t - k and t + k (k <= WINDOW). Because
quantization and faults are deterministic per row, the recomputed rows are exactly what their owners
decode (this triples the work of the -interp mode).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from kernels.codecs import (
    golay_decode,
    golay_encode,
    golay_tables,
    hamming74_decode,
    hamming74_encode,
    hamming84_decode,
    hamming84_encode,
)
from kernels.faults import event_probability, event_thresholds, flip_mask, popcount32
from kernels.interp import interp_fill
from kernels.quant import int4_dequantize, int4_quantize, int4_scale, store_value

# word kinds (mirrors ecc_kv.kv_protect.KINDS): id, values per word, bits per word
KIND_IDS = {"fp16": 0, "raw": 1, "hamming74": 2, "hamming84": 3, "golay2412": 4, "msb": 5}
KIND_SHAPE = {"fp16": (1, 16), "raw": (2, 8), "hamming74": (1, 7), "hamming84": (1, 8), "golay2412": (3, 24),
              "msb": (2, 12)}


@triton.jit
def _encode(q0, q1, q2, KIND: tl.constexpr):
    """Stored word (uint32) of a word's INT4 codes (int32; q1/q2 unused below 2/3 values per word)."""
    if KIND == 1:
        w = (q0 | (q1 << 4)).to(tl.uint32)
    elif KIND == 2:
        w = hamming74_encode(q0)
    elif KIND == 3:
        w = hamming84_encode(q0)
    elif KIND == 4:
        w = golay_encode(q0 | (q1 << 4) | (q2 << 8))
    else:
        w = hamming84_encode((q0 >> 2) | ((q1 >> 2) << 2)) | (((q0 & 3) | ((q1 & 3) << 2)) << 8).to(tl.uint32)
    return w


@triton.jit
def _decode(w, s_own, table_ptr, KIND: tl.constexpr):
    """(own INT4 code int32, word status int32) from a received word (uint32) and the lane's slot in it."""
    if KIND == 1:
        code = (w >> (4 * s_own).to(tl.uint32)) & 15
        st = w * 0
    elif KIND == 2:
        code, st = hamming74_decode(w)
    elif KIND == 3:
        code, st = hamming84_decode(w)
    elif KIND == 4:
        dat, st = golay_decode(w, table_ptr)
        code = (dat >> (4 * s_own).to(tl.uint32)) & 15
    else:
        m, st = hamming84_decode(w & 255)
        sh = (2 * s_own).to(tl.uint32)
        code = (((m >> sh) & 3) << 2) | ((w >> (8 + sh)) & 3)
    return code.to(tl.int32), st.to(tl.int32)


@triton.jit
def _int4_rows(
    x_ptr, flip_ptr, table_ptr, thr_ptr, t, row, d, T, D, G, NG, seed,
    KIND: tl.constexpr, S: tl.constexpr, N_BITS: tl.constexpr, BURST_LEN: tl.constexpr,
    SCALE_FAULTS: tl.constexpr, faults,
):
    """Pipeline for token rows ``t`` ([BT], global row index ``row``) with one word kind.

    Returns (value fp32 [BT, BD], bad int1 [BT, BD], bits flipped, corrected, detected) (int64 scalars).
    """
    rok = (t >= 0) & (t < T)  # [BT]
    dok = d < D  # [BD]
    valid = rok[:, None] & dok[None, :]
    roff = row.to(tl.int64) * D  # [BT]
    xr = tl.load(x_ptr + roff[:, None] + d[None, :], mask=valid, other=0.0).to(tl.float32)
    ax = tl.abs(xr)
    j = d // S
    s_own = d - j * S
    c0 = j * S
    c1 = c0 + 1
    c2 = c0 + 2
    zero = tl.zeros(xr.shape, tl.float32)
    sc0 = zero
    sc1 = zero
    sc2 = zero
    s_own_val = zero  # dequantization scale as stored (faulty if SCALE_FAULTS)
    n_flip = tl.sum(tl.zeros([1], tl.int64), axis=0)
    for g in range(NG):
        amax = tl.max(tl.where(((d // G) == g)[None, :], ax, 0.0), axis=1)  # [BT]
        s16 = int4_scale(amax)
        sf = s16.to(tl.float32)[:, None]
        sc0 = tl.where(((c0 // G) == g)[None, :], sf, sc0)
        sc1 = tl.where(((c1 // G) == g)[None, :], sf, sc1)
        sc2 = tl.where(((c2 // G) == g)[None, :], sf, sc2)
        if SCALE_FAULTS:
            if faults == 1:
                sm = flip_mask(seed, row.to(tl.int64) * NG + g, 1, thr_ptr, 16, BURST_LEN)
                sm = tl.where(rok, sm, 0)
                s16 = ((s16.to(tl.int16, bitcast=True).to(tl.int32) ^ sm).to(tl.int16)).to(tl.float16, bitcast=True)
                n_flip += tl.sum(popcount32(sm).to(tl.int64), axis=0)
        s_own_val = tl.where(((d // G) == g)[None, :], s16.to(tl.float32)[:, None], s_own_val)
    x0 = tl.load(x_ptr + roff[:, None] + c0[None, :], mask=rok[:, None] & (c0 < D)[None, :], other=0.0)
    q0 = tl.where((c0 < D)[None, :], int4_quantize(x0.to(tl.float32), sc0), 8)
    q1 = q0
    q2 = q0
    if S >= 2:
        x1 = tl.load(x_ptr + roff[:, None] + c1[None, :], mask=rok[:, None] & (c1 < D)[None, :], other=0.0)
        q1 = tl.where((c1 < D)[None, :], int4_quantize(x1.to(tl.float32), sc1), 8)
    if S >= 3:
        x2 = tl.load(x_ptr + roff[:, None] + c2[None, :], mask=rok[:, None] & (c2 < D)[None, :], other=0.0)
        q2 = tl.where((c2 < D)[None, :], int4_quantize(x2.to(tl.float32), sc2), 8)
    w = _encode(q0, q1, q2, KIND)
    widx = roff[:, None] + j[None, :]  # [BT, BD] int64 global word index
    m = tl.zeros(widx.shape, tl.int32)
    if faults == 1:
        m = flip_mask(seed, widx, 0, thr_ptr, N_BITS, BURST_LEN)
    elif faults == 2:
        m = tl.load(flip_ptr + widx, mask=valid, other=0).to(tl.int32) & ((1 << N_BITS) - 1)
    m = tl.where(valid, m, 0)
    code, st = _decode(w ^ m.to(tl.uint32, bitcast=True), s_own, table_ptr, KIND)
    v = int4_dequantize(code, s_own_val)
    first = valid & (s_own == 0)[None, :]
    n_flip += tl.sum(tl.where(first, popcount32(m), 0).to(tl.int64))
    n_cor = tl.sum((first & (st == 1)).to(tl.int64))
    n_det = tl.sum((first & (st == 2)).to(tl.int64))
    return v, valid & (st == 2), n_flip, n_cor, n_det


@triton.jit
def _rows_any(
    x_ptr, flip_ptr, table_ptr, thr_ptr, t, t0, bh, d, T, D, G, NG, seed, sink,
    KIND: tl.constexpr, S: tl.constexpr, NB: tl.constexpr,
    SINK_KIND: tl.constexpr, S_SINK: tl.constexpr, NB_SINK: tl.constexpr, HAS_SINK: tl.constexpr,
    BURST_LEN: tl.constexpr, SCALE_FAULTS: tl.constexpr, faults, BLOCK_T: tl.constexpr,
):
    """Rows t (tile starting at token t0) of slab bh, each with its own codec (sink rows: SINK_KIND).

    Used for the interpolation neighbours, whose rows may cross the sink boundary.
    """
    row = bh * T + t
    if HAS_SINK:
        if t0 + BLOCK_T <= sink:
            v, bad, nf, nc, nd = _int4_rows(x_ptr, flip_ptr, table_ptr, thr_ptr, t, row, d, T, D, G, NG, seed,
                                            SINK_KIND, S_SINK, NB_SINK, BURST_LEN, SCALE_FAULTS, faults)
        elif t0 >= sink:
            v, bad, nf, nc, nd = _int4_rows(x_ptr, flip_ptr, table_ptr, thr_ptr, t, row, d, T, D, G, NG, seed,
                                            KIND, S, NB, BURST_LEN, SCALE_FAULTS, faults)
        else:
            in_sink = t < sink
            ts = tl.where(in_sink, t, -1)  # rows outside a part are masked out of it (t = -1 is invalid)
            tm = tl.where(in_sink, -1, t)
            v1, b1, nf1, nc1, nd1 = _int4_rows(x_ptr, flip_ptr, table_ptr, thr_ptr, ts, row, d, T, D, G, NG, seed,
                                               SINK_KIND, S_SINK, NB_SINK, BURST_LEN, SCALE_FAULTS, faults)
            v2, b2, nf2, nc2, nd2 = _int4_rows(x_ptr, flip_ptr, table_ptr, thr_ptr, tm, row, d, T, D, G, NG, seed,
                                               KIND, S, NB, BURST_LEN, SCALE_FAULTS, faults)
            v = tl.where(in_sink[:, None], v1, v2)
            bad = tl.where(in_sink[:, None], b1, b2)
            nf = nf1 + nf2
            nc = nc1 + nc2
            nd = nd1 + nd2
    else:
        v, bad, nf, nc, nd = _int4_rows(x_ptr, flip_ptr, table_ptr, thr_ptr, t, row, d, T, D, G, NG, seed,
                                        KIND, S, NB, BURST_LEN, SCALE_FAULTS, faults)
    return v, bad, nf, nc, nd


@triton.jit(do_not_specialize=["seed", "sink", "faults"])
def _roundtrip_kernel(
    x_ptr, out_ptr, stats_ptr, thr_ptr, flip_ptr, table_ptr, T, D, G, NG, seed, sink, faults,
    KIND: tl.constexpr, S: tl.constexpr, NB: tl.constexpr,
    SINK_KIND: tl.constexpr, S_SINK: tl.constexpr, NB_SINK: tl.constexpr, HAS_SINK: tl.constexpr,
    BURST_LEN: tl.constexpr, SCALE_FAULTS: tl.constexpr,
    INTERP: tl.constexpr, WINDOW: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # x, out: [B*H, T, D]; program = (slab bh, BLOCK_T tokens, all of D); stats: int64 [4]
    # With a sink codec the first programs tile [0, sink) and the rest [sink, T): no tile mixes codecs.
    bh = tl.program_id(0)
    p = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)
    if HAS_SINK:
        n_sink = tl.minimum(sink, T)
        sink_tiles = (n_sink + BLOCK_T - 1) // BLOCK_T
        is_sink = p < sink_tiles
        t0 = tl.where(is_sink, p * BLOCK_T, n_sink + (p - sink_tiles) * BLOCK_T)
        limit = tl.where(is_sink, n_sink, T)
    else:
        t0 = p * BLOCK_T
        limit = T
    t = t0 + tl.arange(0, BLOCK_T)
    t_eff = tl.where(t < limit, t, -1)  # rows of other tiles are masked (t = -1 is never valid)
    row = bh * T + t_eff
    if HAS_SINK:
        if is_sink:
            v, bad, nf, nc, nd = _int4_rows(x_ptr, flip_ptr, table_ptr, thr_ptr, t_eff, row, d, T, D, G, NG, seed,
                                            SINK_KIND, S_SINK, NB_SINK, BURST_LEN, SCALE_FAULTS, faults)
        else:
            v, bad, nf, nc, nd = _int4_rows(x_ptr, flip_ptr, table_ptr, thr_ptr, t_eff, row, d, T, D, G, NG, seed,
                                            KIND, S, NB, BURST_LEN, SCALE_FAULTS, faults)
    else:
        v, bad, nf, nc, nd = _int4_rows(x_ptr, flip_ptr, table_ptr, thr_ptr, t_eff, row, d, T, D, G, NG, seed,
                                        KIND, S, NB, BURST_LEN, SCALE_FAULTS, faults)
    valid = (t_eff >= 0)[:, None] & (d < D)[None, :]
    if INTERP:
        left = tl.zeros_like(v)
        right = tl.zeros_like(v)
        has_l = tl.zeros(v.shape, tl.int1)
        has_r = has_l
        for k in tl.static_range(1, WINDOW + 1):
            vl, bl, _f, _c, _d = _rows_any(x_ptr, flip_ptr, table_ptr, thr_ptr, t - k, t0 - k, bh, d, T, D, G, NG,
                                           seed, sink, KIND, S, NB, SINK_KIND, S_SINK, NB_SINK, HAS_SINK,
                                           BURST_LEN, SCALE_FAULTS, faults, BLOCK_T)
            gl = ((t - k) >= 0)[:, None] & valid & ~bl
            left = tl.where(gl & ~has_l, vl, left)
            has_l = has_l | gl
            vr, br, _f, _c, _d = _rows_any(x_ptr, flip_ptr, table_ptr, thr_ptr, t + k, t0 + k, bh, d, T, D, G, NG,
                                           seed, sink, KIND, S, NB, SINK_KIND, S_SINK, NB_SINK, HAS_SINK,
                                           BURST_LEN, SCALE_FAULTS, faults, BLOCK_T)
            gr = ((t + k) < T)[:, None] & valid & ~br
            right = tl.where(gr & ~has_r, vr, right)
            has_r = has_r | gr
        v = tl.where(bad, interp_fill(left, has_l, right, has_r), v)
        tl.atomic_add(stats_ptr + 3, tl.sum(bad.to(tl.int64)), sem="relaxed")
    offs = row.to(tl.int64)[:, None] * D + d[None, :]
    store_value(out_ptr, offs, v, valid)
    tl.atomic_add(stats_ptr + 0, nf, sem="relaxed")
    tl.atomic_add(stats_ptr + 1, nc, sem="relaxed")
    tl.atomic_add(stats_ptr + 2, nd, sem="relaxed")


@triton.jit(do_not_specialize=["seed", "faults"])
def _fp16_kernel(x_ptr, out_ptr, stats_ptr, thr_ptr, flip_ptr, N, seed, faults,
                 BURST_LEN: tl.constexpr, TO_HALF: tl.constexpr, BLOCK: tl.constexpr):
    # x, out: [N] values stored as 16-bit floats (fp16, or bf16 for bf16 input); word index = value index
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    x = tl.load(x_ptr + offs, mask=ok, other=0.0)
    if TO_HALF:
        x = x.to(tl.float16)
    m = tl.zeros(offs.shape, tl.int32)
    if faults == 1:
        m = flip_mask(seed, offs, 0, thr_ptr, 16, BURST_LEN)
    elif faults == 2:
        m = tl.load(flip_ptr + offs, mask=ok, other=0).to(tl.int32) & 0xFFFF
    y = (x.to(tl.int16, bitcast=True).to(tl.int32) ^ m).to(tl.int16).to(x.dtype, bitcast=True)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=ok)
    tl.atomic_add(stats_ptr, tl.sum(tl.where(ok, popcount32(m), 0).to(tl.int64)), sem="relaxed")


@functools.lru_cache(maxsize=16)
def _dummy(device: str) -> torch.Tensor:
    """A never-read int32 placeholder for the flip-mask pointer (cached: no allocation per call)."""
    return torch.zeros(1, dtype=torch.int32, device=device)


def roundtrip_triton(
    x: torch.Tensor, kind: str, sink_kind: str | None, ber: float, seed: int, model: str, burst_len: int,
    sink_tokens: int, group_size: int, scale_faults: bool, interpolate: bool, window: int,
    flip_masks: torch.Tensor | None, block_t: int | None = None, stats_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher: ``x [B, H, T, D]`` -> (x_hat like x, int64 [4] counters: flipped, corrected, detected, interpolated).

    ``block_t`` (tokens per program) only changes the grid, never the result. ``stats_out``: counters are
    accumulated into this int64 [4] tensor (and returned) instead of a fresh one.
    """
    b, h, t, d = x.shape
    xc = x.contiguous()
    out = torch.empty_like(xc)
    stats = torch.zeros(4, dtype=torch.int64, device=x.device) if stats_out is None else stats_out
    thr = event_thresholds(event_probability(ber, model, burst_len), 32, x.device)
    blen = 1 if model == "bsc" else burst_len
    explicit = flip_masks is not None
    fm = flip_masks.contiguous() if explicit else _dummy(str(x.device))
    faults = 2 if explicit else (1 if ber > 0 else 0)
    if kind == "fp16":
        n = xc.numel()
        block = 1024
        _fp16_kernel[(triton.cdiv(n, block),)](
            xc, out, stats, thr, fm, n, seed, faults, blen, x.dtype == torch.float32, block
        )
        return out, stats
    s, nb = KIND_SHAPE[kind]
    has_sink = sink_kind is not None and sink_tokens > 0
    sk = sink_kind if has_sink else kind
    s_sink, nb_sink = KIND_SHAPE[sk]
    block_d = triton.next_power_of_2(d)
    if block_t is None:
        block_t = max(1, min(triton.next_power_of_2(t), 2048 // block_d))
    n_sink = min(sink_tokens, t) if has_sink else 0
    grid = (b * h, triton.cdiv(n_sink, block_t) + triton.cdiv(t - n_sink, block_t))
    _roundtrip_kernel[grid](
        xc, out, stats, thr, fm, golay_tables(x.device), t, d, group_size, d // group_size, seed, sink_tokens, faults,
        KIND_IDS[kind], s, nb, KIND_IDS[sk], s_sink, nb_sink, has_sink, blen, scale_faults,
        interpolate, window, block_t, block_d,
    )
    return out, stats
