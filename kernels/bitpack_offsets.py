"""Group offsets of the bit-planar packing, found on the device inside the pack/unpack launch.

A group's byte offset is ``PB`` times the sum of the widths of all groups before it. The widths
are inputs, so no serial chain is needed: the first ``NB`` programs of a launch are *producers*
(``produce_widths``), one per block of ``TPB`` tiles; each sums its tiles' widths and publishes
every tile sum and its block sum as int64 *words* ``(epoch << 32) | sum``. Every other program
packs or unpacks one tile: it issues its data loads, then adds the block sums before its block
and the tile sums before it in its block (``tile_first``), waiting only until those words carry
this call's epoch (producers never wait, and have the lowest program ids, so they run first).

The words live in a buffer kept per device and stream (``_published_words``); a new epoch per
call makes the words of earlier calls stale, so nothing is zeroed and a call is one launch.
Calls on one stream run in order, so no two share the buffer at once (CUDA graph replay would
reuse an epoch: not supported). Producers also write the block sums and counts of invalid
widths into a per-call ``meta`` tensor; the host reads it only when it asks for the packed
size (``packed_size``), which raises for invalid widths (the kernels clamp them to 1..8, so
nothing is written out of bounds).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Launch shape of kernels.bitpack (H100, kv_pack_bench): values per program (twice that from ``big_values``
# values on: off), warps; rows per producer block (``block_rows``: block_rows // BLOCK_M tiles a block);
# ``sums_step``: block sums a program reads per step when it adds up the blocks before its own.
TUNING: dict[str, int] = {"values_per_program": 4096, "big_values": 1 << 62, "num_warps": 4, "block_rows": 1024,
                          "sums_step": 512}


@triton.jit
def produce_widths(bits_ptr, wout_ptr, ws_ptr, meta_ptr, blk, M, NPR, NB, EPOCH, LO: tl.constexpr,
                   WRITE_W: tl.constexpr, BLOCK_M: tl.constexpr, TPB: tl.constexpr):
    """A producer program: block ``blk``'s tile width sums and block sum, published with this call's epoch.

    Widths are clamped to LO..8 (memory safety); ``WRITE_W`` also stores them as given (uint8).
    ``meta`` gets the block sum and its count of invalid widths (the host sums them lazily).
    """
    rows = blk * (TPB * BLOCK_M) + tl.arange(0, TPB * BLOCK_M)  # [TPB * BM]
    rm = rows < M
    braw = tl.load(bits_ptr + rows // NPR, mask=rm, other=LO).to(tl.int32)
    if WRITE_W:
        tl.store(wout_ptr + rows // NPR, braw.to(tl.uint8), mask=rm & (rows % NPR == 0))
    b = tl.where(rm, tl.minimum(tl.maximum(braw, LO), 8), 0)
    ts = tl.sum(tl.reshape(b, (TPB, BLOCK_M)), axis=1)  # [TPB]
    tag = EPOCH.to(tl.int64) << 32  # a word is (epoch << 32) | sum: value and flag in one store
    tl.store(ws_ptr + NB + blk * TPB + tl.arange(0, TPB), tag | ts.to(tl.int64))
    bs = tl.sum(ts)
    tl.store(ws_ptr + blk, tag | bs.to(tl.int64))
    tl.store(meta_ptr + blk, bs)
    tl.store(meta_ptr + NB + blk, tl.sum(((braw < LO) | (braw > 8)).to(tl.int32)))


@triton.jit
def _sum_published(ptr, need, EPOCH):
    """Sum of the words at ``ptr`` where ``need``, once all of them carry this call's epoch (spins until then)."""
    w = tl.load(ptr, mask=need, other=0, volatile=True)
    ready = tl.min(tl.where(need, (w >> 32) == EPOCH, True).to(tl.int32))
    while ready == 0:
        w = tl.load(ptr, mask=need, other=0, volatile=True)
        ready = tl.min(tl.where(need, (w >> 32) == EPOCH, True).to(tl.int32))
    return tl.sum(tl.where(need, w & 0xFFFFFFFF, 0))


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
def tile_first(ws_ptr, tile, rows, b, NB, EPOCH, FIXED: tl.constexpr, TPB: tl.constexpr, SUMS: tl.constexpr):
    """Plane index [BM] (int64) of each row's first plane: fixed stride, or the published block and tile sums
    before it plus the tile's own."""
    if FIXED > 0:  # one return: the compiler would still build the other branch after an early one
        first = rows.to(tl.int64) * FIXED
    else:
        blk = tile // TPB
        j = tl.arange(0, TPB)
        acc = _sum_published(ws_ptr + NB + blk * TPB + j, j < tile - blk * TPB, EPOCH)
        d = tl.arange(0, SUMS)
        for s0 in range(0, blk, SUMS):
            acc += _sum_published(ws_ptr + s0 + d, s0 + d < blk, EPOCH)
        first = acc + (tl.cumsum(b, 0) - b).to(tl.int64)
    return first


_EPOCH_MAX = (1 << 31) - 1
_WORDS: dict[tuple[str, int], list] = {}  # (device, stream) -> [int64 words, last epoch]


def unit(g: int) -> int:
    """Bytes per plane unit: 4 when ``ceil(G / 8) % 4 == 0``, else 2 or 1."""
    pb = (g + 7) // 8
    return 4 if pb % 4 == 0 else 2 if pb % 2 == 0 else 1


def block_m(g: int, m: int = 0) -> int:
    """Groups per program: ~``values_per_program`` values (twice that from ``big_values`` values on)."""
    g2 = triton.next_power_of_2(max(g, 8 * unit(g)))
    vpp = TUNING["values_per_program"] * (2 if m * g >= TUNING["big_values"] else 1)
    return max(1, triton.next_power_of_2(vpp) // g2)


def _tiles(g: int, m: int) -> tuple[int, int, int, int]:
    """(rows per tile BM, tiles, tiles per block TPB, blocks) of a call on ``m`` groups of ``g`` values."""
    bm = block_m(g, m)
    n_tiles = triton.cdiv(m, bm)
    tpb = max(1, TUNING["block_rows"] // bm)
    return bm, n_tiles, tpb, triton.cdiv(n_tiles, tpb)


def _published_words(dev: torch.device, n: int) -> tuple[torch.Tensor, int]:
    """The stream's persistent word buffer (>= ``n`` int64) and a fresh epoch for this call.

    Words written by earlier calls carry older epochs, so nothing is zeroed per call; calls on one
    stream run in order, so they never share the buffer at the same time (not for CUDA graph replay).
    """
    key = (str(dev), torch.cuda.current_stream(dev).cuda_stream if dev.type == "cuda" else 0)
    ent = _WORDS.get(key)
    if ent is None or ent[0].numel() < n or ent[1] >= _EPOCH_MAX:
        size = max(n, 2 * ent[0].numel() if ent is not None else 0, 1024)
        ent = [torch.zeros(size, dtype=torch.int64, device=dev), 0]
        _WORDS[key] = ent
    ent[1] += 1
    return ent[0], ent[1]


def workspace_bytes(m: int, g: int) -> int:
    """Bytes of width-sum words (block and tile sums, int64) and per-call sums (int32) a call on ``m`` groups writes."""
    _, _, tpb, nb = _tiles(g, m)
    return 8 * nb * (1 + tpb) + 4 * 2 * nb


def packed_size(meta: torch.Tensor, g: int, lo: int) -> int:
    """Bytes written by a pack whose widths were summed on the device (one device-to-host read).

    ``meta``: int32 [2, blocks] (block width sums, invalid widths per block). Raises ValueError when
    the kernel saw widths outside ``lo..8`` (their planes were clamped).
    """
    n_bad, total = torch.stack([meta[1].sum(dtype=torch.int64), meta[0].sum(dtype=torch.int64)]).tolist()
    if n_bad:
        raise ValueError(f"bits must lie in {lo}..8{' (symmetric needs >= 2)' if lo == 2 else ''}: "
                         f"{n_bad} groups outside")
    return total * ((g + 7) // 8)


def offsets_args(dev: torch.device, m: int, g: int, fixed: int) -> tuple[torch.Tensor | None, torch.Tensor | None,
                                                                          int, int, int, int, int]:
    """(words, meta, epoch, BM, TPB, blocks, grid): what a launch needs for its offsets (no words when fixed)."""
    bm, n_tiles, tpb, nb = _tiles(g, m)
    if fixed:
        return None, None, 0, bm, 1, 0, n_tiles
    words, epoch = _published_words(dev, nb * (1 + tpb))
    meta = torch.empty(2, nb, dtype=torch.int32, device=dev)
    return words, meta, epoch, bm, tpb, nb, nb + n_tiles
