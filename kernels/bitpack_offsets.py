"""Group offsets of the bit-planar packing, found on the device without a serial chain.

A group's byte offset is ``PB`` times the sum of the widths of all groups before it. The widths
are inputs, so a small first launch (``_width_sums_kernel``, one program per *block* of ``TPB``
tiles) writes every tile's width sum, every block's sum and a count of invalid widths into the
workspace ``ws`` (int32 ``[2 + TPB, blocks]``: row 0 block sums, row 1 invalid counts, rows 2..
the tile sums); in the main launch a tile's offset is the sum of the block sums before its block
plus the tile sums before it in its block (``tile_first``: short vector loads that overlap the
data loads). No atomics, no spinning, no zeroed workspace: every program finds its offset on
its own. With widths given, the pack's first launch also writes them as uint8 (the stored
widths), which the main launch reads back from L2. The host learns the packed size only when it
asks (``packed_size``), one read that also reports invalid widths (the kernels clamp them to
1..8, so nothing is written out of bounds).

(A one-launch variant, producer programs publishing the sums with a per-call epoch, measured
0.57-0.60 of copy at 256M values on the H100 against 0.86-0.91 for this one: docs/qaq.md.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Launch shape of kernels.bitpack (H100, kv_pack_bench): values per program (twice that from ``big_values``
# values on: off), warps; rows per block of the width-sum launch (``block_rows``: block_rows // BLOCK_M
# tiles a block); ``sums_step``: block sums a program reads per step when it adds up the blocks before its own.
TUNING: dict[str, int] = {"values_per_program": 4096, "big_values": 1 << 62, "num_warps": 4, "block_rows": 2048,
                          "sums_step": 512}


@triton.jit
def _width_sums_kernel(bits_ptr, wout_ptr, ws_ptr, M, NPR, NB, LO: tl.constexpr, WRITE_W: tl.constexpr,
                       BLOCK_M: tl.constexpr, TPB: tl.constexpr):
    """First launch: per block of TPB tiles, each tile's width sum, the block's sum and its invalid widths.

    Widths are clamped to LO..8 (memory safety); ``WRITE_W`` also stores the widths as given (uint8).
    """
    blk = tl.program_id(0)
    rows = blk * (TPB * BLOCK_M) + tl.arange(0, TPB * BLOCK_M)  # [TPB * BM]
    rm = rows < M
    braw = tl.load(bits_ptr + rows // NPR, mask=rm, other=LO).to(tl.int32)
    if WRITE_W:
        tl.store(wout_ptr + rows // NPR, braw.to(tl.uint8), mask=rm & (rows % NPR == 0))
    b = tl.where(rm, tl.minimum(tl.maximum(braw, LO), 8), 0)
    ts = tl.sum(tl.reshape(b, (TPB, BLOCK_M)), axis=1)  # [TPB]
    tl.store(ws_ptr + 2 * NB + blk * TPB + tl.arange(0, TPB), ts)
    tl.store(ws_ptr + blk, tl.sum(ts))
    tl.store(ws_ptr + NB + blk, tl.sum(((braw < LO) | (braw > 8)).to(tl.int32)))


@triton.jit
def tile_rows(bits_ptr, tile, M, NPR, FIXED: tl.constexpr, LO: tl.constexpr, BLOCK_M: tl.constexpr):
    """Rows [BM] of a tile and their widths [BM] (clamped to LO..8 for memory safety, 0 past M)."""
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    if FIXED > 0:
        b = tl.full((BLOCK_M,), FIXED, tl.int32)
    else:
        braw = tl.load(bits_ptr + rows // NPR, mask=rows < M, other=LO).to(tl.int32)
        b = tl.where(rows < M, tl.minimum(tl.maximum(braw, LO), 8), 0)
    return rows, b


@triton.jit
def tile_first(ws_ptr, tile, rows, b, NB, FIXED: tl.constexpr, TPB: tl.constexpr, SUMS: tl.constexpr):
    """Plane index [BM] (int64) of each row's first plane.

    Fixed stride, or the block sums before the tile's block, the tile sums before it in its block and the tile's own.
    """
    if FIXED > 0:  # one return: the compiler would still build the other branch after an early one
        first = rows.to(tl.int64) * FIXED
    else:
        blk = tile // TPB
        j = tl.arange(0, TPB)
        ts = tl.load(ws_ptr + 2 * NB + blk * TPB + j, mask=j < tile - blk * TPB, other=0)  # [TPB]
        acc = tl.sum(ts.to(tl.int64))
        d = tl.arange(0, SUMS)
        for s0 in range(0, blk, SUMS):
            acc += tl.sum(tl.load(ws_ptr + s0 + d, mask=s0 + d < blk, other=0).to(tl.int64))
        first = acc + (tl.cumsum(b, 0) - b).to(tl.int64)
    return first


def unit(g: int) -> int:
    """Bytes per plane unit: 4 when ``ceil(G / 8) % 4 == 0``, else 2 or 1."""
    pb = (g + 7) // 8
    return 4 if pb % 4 == 0 else 2 if pb % 2 == 0 else 1


def block_m(g: int, m: int = 0) -> int:
    """Groups per program: ~``values_per_program`` values (twice that from ``big_values`` values on)."""
    g2 = triton.next_power_of_2(max(g, 8 * unit(g)))
    vpp = TUNING["values_per_program"] * (2 if m * g >= TUNING["big_values"] else 1)
    return max(1, triton.next_power_of_2(vpp) // g2)


def tiles(g: int, m: int) -> tuple[int, int, int, int]:
    """(rows per tile BM, tiles, tiles per block TPB, blocks) of a call on ``m`` groups of ``g`` values."""
    bm = block_m(g, m)
    n_tiles = triton.cdiv(m, bm)
    tpb = max(1, TUNING["block_rows"] // bm)
    return bm, n_tiles, tpb, triton.cdiv(n_tiles, tpb)


def workspace_bytes(m: int, g: int) -> int:
    """Bytes of the width-sum workspace of a call on ``m`` groups of ``g`` values (written once, then read)."""
    _, _, tpb, nb = tiles(g, m)
    return 4 * (2 + tpb) * nb


def new_workspace(dev: torch.device, m: int, g: int) -> tuple[torch.Tensor, int, int]:
    """The workspace of a call (int32 [2 + TPB, blocks], not zeroed: every entry is written), TPB, blocks."""
    _, _, tpb, nb = tiles(g, m)
    return torch.empty(2 + tpb, nb, dtype=torch.int32, device=dev), tpb, nb


def launch_width_sums(bits: torch.Tensor, ws: torch.Tensor, m: int, g: int, n_per_row: int, lo: int,
                      wout: torch.Tensor | None) -> None:
    """First launch (see the module docstring); ``wout``: uint8 [m / n_per_row] to receive the widths, or None."""
    bm, _, tpb, nb = tiles(g, m)
    if m:
        _width_sums_kernel[(nb,)](bits, wout if wout is not None else ws, ws, m, n_per_row, nb, LO=lo,
                                  WRITE_W=wout is not None, BLOCK_M=bm, TPB=tpb, num_warps=4)


def packed_size(ws: torch.Tensor, g: int, lo: int) -> int:
    """Bytes written by a pack whose widths were summed on the device (one device-to-host read).

    Raises ValueError when the kernel saw widths outside ``lo..8`` (their planes were clamped).
    """
    n_bad, total = torch.stack([ws[1].sum(dtype=torch.int64), ws[0].sum(dtype=torch.int64)]).tolist()
    if n_bad:
        raise ValueError(f"bits must lie in {lo}..8{' (symmetric needs >= 2)' if lo == 2 else ''}: "
                         f"{n_bad} groups outside")
    return total * ((g + 7) // 8)
