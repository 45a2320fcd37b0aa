"""Paged KV-cache write: quantize, ECC-encode and scatter new K/V rows into their slots, one pass.

Torch twin: ``ecc_kv.cache.cache_write_torch`` (bit for bit). Row layouts (what the bytes of
one token-head row hold) are documented in ``ecc_kv.cache_layout``; the quantizer is
``kernels.quant`` and the codeword bit layouts are ``kernels.codecs``' device functions.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import codecs as kc
from kernels.quant import int4_quantize, int4_scale

# codec ids shared with kernels.paged_attention
CODEC_IDS = {None: 0, "hamming84": 1, "hamming74": 2, "golay2412": 3}
# values per packing unit (row of the register tile) and its power-of-two width
_UNIT = {0: (2, 2), 1: (1, 1), 2: (8, 8), 3: (3, 4)}


@triton.jit
def _cache_write_kernel(
    x_ptr, stride_xn, stride_xh, N,  # x: [N, H, D]
    slot_ptr,  # [N] int64
    data_ptr, stride_db, stride_dh, stride_dt,  # data: [NB, H, BS, W] uint8
    scale_ptr, stride_sb, stride_sh, stride_st,  # scale: [NB, H, BS, NG] fp16
    slot_lo, slot_hi,  # this launch handles slots in [slot_lo, slot_hi)
    D: tl.constexpr, BS: tl.constexpr, GS: tl.constexpr, NG: tl.constexpr, BT: tl.constexpr,
    CODEC: tl.constexpr, VPU: tl.constexpr, UW: tl.constexpr, NU: tl.constexpr, NUP: tl.constexpr,
):  # fmt: skip
    # one program = BT tokens of one head; register tile [BT, NUP, UW]: unit a (one output
    # byte or codeword) of token n holds the values d = VPU * a + b
    n = tl.program_id(0) * BT + tl.arange(0, BT)
    h = tl.program_id(1)
    slot = tl.load(slot_ptr + n, mask=n < N, other=-1)
    tmask = (n < N) & (slot >= slot_lo) & (slot < slot_hi)
    slot = tl.where(tmask, slot - slot_lo, 0)
    blk = slot // BS
    off = slot % BS
    t3 = tmask[:, None, None]
    a = tl.arange(0, NUP)[None, :, None]
    b = tl.arange(0, UW)[None, None, :]
    d = a * VPU + b
    valid = t3 & (b < VPU) & (d < D) & (a < NU)
    xrow = x_ptr + n.to(tl.int64)[:, None, None] * stride_xn + h * stride_xh
    x = tl.load(xrow + d, mask=valid, other=0.0).to(tl.float32)
    srow = scale_ptr + blk * stride_sb + h * stride_sh + off * stride_st  # [BT]
    s = tl.zeros([BT, NUP, UW], dtype=tl.float32)
    for g in tl.static_range(NG):
        ing = valid & (d >= g * GS) & (d < (g + 1) * GS)
        sg = int4_scale(tl.max(tl.max(tl.where(ing, tl.abs(x), 0.0), axis=2), axis=1))  # [BT] fp16
        tl.store(srow + g, sg, mask=tmask)
        s = tl.where(ing, sg.to(tl.float32)[:, None, None], s)
    code = tl.where(valid, int4_quantize(x, s), 8)  # int32 codes, padding = 8 (zero)
    row = data_ptr + blk * stride_db + h * stride_dh + off * stride_dt  # [BT]
    a2 = tl.arange(0, NUP)[None, :]
    um = tmask[:, None] & (a2 < NU)
    r2 = row[:, None]
    if CODEC == 0:  # raw INT4: byte a = code[2a] | code[2a+1] << 4
        byte = tl.sum(tl.where(b < 2, code << (4 * b), 0), axis=2)
        tl.store(r2 + a2, byte.to(tl.uint8), mask=um)
    elif CODEC == 1:  # hamming84: one byte per value
        cw = kc.hamming84_encode(code).to(tl.int32)
        tl.store(row[:, None, None] + a, cw.to(tl.uint8), mask=valid)
    elif CODEC == 2:  # hamming74: byte 7a+j = cw[j] | bit j of cw[7] << 7
        cw = kc.hamming74_encode(code).to(tl.int32)
        top = tl.sum(tl.where(b == 7, cw, 0), axis=2)[:, :, None]  # [BT, NUP, 1]
        byte = (cw & 0x7F) | (((top >> b) & 1) << 7)
        tl.store(row[:, None, None] + 7 * a + b, byte.to(tl.uint8), mask=valid & (b < 7))
    else:  # golay2412: 3 values per 24-bit codeword, three byte planes of NU bytes
        msg = tl.sum(tl.where(b < 3, code << (4 * b), 0), axis=2)  # [BT, NUP] 12-bit messages
        cw = kc.golay_encode(msg).to(tl.int32)
        tl.store(r2 + a2, (cw & 0xFF).to(tl.uint8), mask=um)
        tl.store(r2 + NU + a2, ((cw >> 8) & 0xFF).to(tl.uint8), mask=um)
        tl.store(r2 + 2 * NU + a2, ((cw >> 16) & 0xFF).to(tl.uint8), mask=um)


def _launch(
    x: torch.Tensor, slots: torch.Tensor, data: torch.Tensor, scale: torch.Tensor,
    codec: str | None, group_size: int, slot_lo: int, slot_hi: int,
) -> None:  # fmt: skip
    n, h, d = x.shape
    cid = CODEC_IDS[codec]
    vpu, uw = _UNIT[cid]
    nu = -(-d // vpu)
    bs = data.shape[2]
    bt = 16
    _cache_write_kernel[(triton.cdiv(n, bt), h)](
        x, x.stride(0), x.stride(1), n, slots,
        data, data.stride(0), data.stride(1), data.stride(2),
        scale, scale.stride(0), scale.stride(1), scale.stride(2),
        slot_lo, slot_hi,
        D=d, BS=bs, GS=group_size, NG=d // group_size, BT=bt,
        CODEC=cid, VPU=vpu, UW=uw, NU=nu, NUP=triton.next_power_of_2(nu),
    )  # fmt: skip


def cache_write(
    x: torch.Tensor,
    slot_mapping: torch.Tensor,
    data: torch.Tensor,
    scale: torch.Tensor,
    sink_data: torch.Tensor | None = None,
    sink_scale: torch.Tensor | None = None,
    *,
    codec: str | None,
    sink_codec: str | None = None,
    group_size: int,
) -> None:
    """Write ``x [N, H, D]`` into ``data [NB, H, BS, W]`` / ``scale [NB, H, BS, NG]`` at ``slot_mapping [N]``.

    Slots ``< 0`` are skipped; slots ``>= NB * BS`` go to the sink pool (``sink_data`` with
    ``sink_codec``), offset by ``NB * BS``. x's last dim must be contiguous.
    """
    if codec not in CODEC_IDS or sink_codec not in CODEC_IDS:
        raise ValueError(f"codec={codec!r} / sink_codec={sink_codec!r}: choose from {list(CODEC_IDS)}")
    if x.dim() != 3 or x.stride(2) != 1:
        raise ValueError(f"x must be [N, H, D] with a contiguous last dim, got shape {tuple(x.shape)}")
    if data.dtype != torch.uint8 or scale.dtype != torch.float16 or data.stride(3) != 1 or scale.stride(3) != 1:
        raise TypeError("data must be uint8 and scale fp16, both with a contiguous last dim")
    if x.shape[0] == 0:
        return
    slots = slot_mapping.to(torch.int64).contiguous()
    main = data.shape[0] * data.shape[2]
    _launch(x, slots, data, scale, codec, group_size, 0, main)
    if sink_data is not None:
        if sink_scale is None:
            raise ValueError("sink_scale is required with sink_data")
        _launch(x, slots, sink_data, sink_scale, sink_codec, group_size, main, main + sink_data.shape[0] * sink_data.shape[2])
