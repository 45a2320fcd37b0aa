"""Row moves of the paired-replacement weight cache in one Triton launch.

Program (j, c) copies column block c of move j: buffer row ``dst[j]`` receives either a
pool row (``j < n_pool``; pool row ``src[j]``, or staging row ``j`` when the pool rows were
already gathered into a staging block) or the buffer row ``src[j]`` from the tail being
vacated. The planner guarantees sources and destinations never overlap, so all moves run
at once. The counts are read from device memory, so the launch needs no host sync and a
fixed grid of ``capacity`` moves can be captured in a CUDA graph. The plain-torch twin is
``ecc_kv.weight_cache.apply_moves_torch``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _apply_moves_kernel(
    buf_ptr,
    rows_ptr,
    dst_ptr,
    src_ptr,
    counts_ptr,
    row_len,
    BLOCK: tl.constexpr,
    STAGED: tl.constexpr,
):
    j = tl.program_id(0)
    cb = tl.program_id(1)
    n_pool = tl.load(counts_ptr)
    n_moves = tl.load(counts_ptr + 1)
    if j < n_moves:
        d = tl.load(dst_ptr + j).to(tl.int64)
        s = tl.load(src_ptr + j).to(tl.int64)
        cols = cb * BLOCK + tl.arange(0, BLOCK)
        ok = cols < row_len
        if j < n_pool:
            if STAGED:
                r = j.to(tl.int64)
            else:
                r = s
            v = tl.load(rows_ptr + r * row_len + cols, mask=ok)
        else:
            v = tl.load(buf_ptr + s * row_len + cols, mask=ok)
        tl.store(buf_ptr + d * row_len + cols, v, mask=ok)


def _block(row_len: int, elem_bytes: int) -> int:
    """Column block: up to 16 KiB per program, a power of two, at least one 16-byte vector."""
    return max(16 // elem_bytes, min(triton.next_power_of_2(row_len), 16384 // elem_bytes))


def apply_moves(
    buf: torch.Tensor,
    rows: torch.Tensor,
    dst: torch.Tensor,
    src: torch.Tensor,
    counts: torch.Tensor,
    *,
    max_moves: int | None = None,
    staged: bool = False,
) -> None:
    """Apply a move plan to ``buf`` in one launch.

    buf: [cap, R] contiguous; rows: [*, R] contiguous (the pool, or a staging block when
    ``staged``); dst, src: int32 [>= max_moves]; counts: int32 [2] = (n_pool, n_moves) on
    the buffer's device. ``max_moves`` bounds the grid (default: every slot of ``buf``,
    which keeps the launch free of host syncs and CUDA-graph capturable).
    """
    if buf.dim() != 2 or rows.dim() != 2 or rows.shape[1] != buf.shape[1]:
        raise ValueError(f"buf and rows must be [*, R] with equal R, got {tuple(buf.shape)} and {tuple(rows.shape)}")
    if not (buf.is_contiguous() and rows.is_contiguous()):
        raise ValueError("buf and rows must be contiguous")
    if rows.dtype != buf.dtype:
        raise TypeError(f"rows dtype {rows.dtype} differs from buf dtype {buf.dtype}")
    for name, t in (("dst", dst), ("src", src), ("counts", counts)):
        if t.dtype != torch.int32:
            raise TypeError(f"{name} must be int32, got {t.dtype}")
    n = buf.shape[0] if max_moves is None else int(max_moves)
    if n <= 0:
        return
    row_len = buf.shape[1]
    block = _block(row_len, buf.element_size())
    grid = (n, triton.cdiv(row_len, block))
    _apply_moves_kernel[grid](buf, rows, dst, src, counts, row_len, BLOCK=block, STAGED=staged, num_warps=4)
