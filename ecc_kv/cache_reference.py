"""Torch reference paths of the paged ECC cache: decode, attention, fault injection, scrub.

The readable oracle for ``kernels.paged_attention``: gather each sequence's rows
through its block table, unpack and decode the codewords, interpolate detected values
(interp modes), dequantize, then ``scaled_dot_product_attention``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ecc_kv.quant import dequantize_int4

if TYPE_CHECKING:
    from ecc_kv.cache import PagedECCCache
    from ecc_kv.cache_layout import Layout


def _seq_rows(cache: PagedECCCache, layer: int, b: int, which: str) -> list[tuple[Layout, torch.Tensor, torch.Tensor]]:
    """Stored rows of sequence ``b`` per pool, in token order: (layout, data [H, n, W], scale [H, n, NG])."""
    c = cache.config
    n = cache.host_lengths[b]
    table = cache._host_tables[b]
    bs, nsink = c.block_size, c.sink_blocks
    dev = cache.device
    t = torch.arange(n, device=dev)
    blk = torch.tensor(table, dtype=torch.int64, device=dev)[t // bs] if n else t
    off = t % bs
    main = (getattr(cache, f"{which}_data")[layer], getattr(cache, f"{which}_scale")[layer], c.layout)
    if nsink == 0:
        parts = [(main, slice(0, n))]
    else:
        sink = (getattr(cache, f"{which}_sink_data")[layer], getattr(cache, f"{which}_sink_scale")[layer], c.sink_layout)
        ns = min(n, c.sink_tokens)
        parts = [(sink, slice(0, ns)), (main, slice(ns, n))]
    out = []
    for (data, scale, layout), sl in parts:
        bi, oi = blk[sl], off[sl]
        out.append((layout, data[bi, :, oi].transpose(0, 1), scale[bi, :, oi].transpose(0, 1)))  # [H, n, W]
    return out


def decode_sequence(
    cache: PagedECCCache, layer: int, b: int, which: str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Decoded K or V of one sequence: (x [H, n, D], value status [H, n, D], corrected, detected codewords)."""
    c = cache.config
    xs, sts = [], []
    n_corr = n_det = 0
    for layout, data, scale in _seq_rows(cache, layer, b, which):
        codes, status = layout.unpack(data)  # [H, n, D], [H, n, NW]
        n_corr += int((status == 1).sum())
        n_det += int((status == 2).sum())
        xs.append(dequantize_int4(codes, scale, group_size=c.group_size, dtype=dtype))
        sts.append(layout.value_status(status))
    x, st = torch.cat(xs, dim=1), torch.cat(sts, dim=1)
    if c.interpolate and x.shape[1] > 0:
        from ecc_kv.interp import interpolate_detected

        x = interpolate_detected(x, st == 2)
    return x, st, n_corr, n_det


def decode_sequences(
    cache: PagedECCCache, layer: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoded ``k, v [B, H, T_max, D]`` (zero past each length) and status ``[2, B, H, T_max, D]``."""
    c = cache.config
    tmax = max(cache.host_lengths)
    shape = (cache.max_seqs, c.num_kv_heads, tmax, c.head_dim)
    kv = torch.zeros(2, *shape, dtype=dtype, device=cache.device)
    st = torch.zeros(2, *shape, dtype=torch.uint8, device=cache.device)
    for b, n in enumerate(cache.host_lengths):
        for i, which in enumerate(("k", "v")):
            x, s, _, _ = decode_sequence(cache, layer, b, which, dtype)
            kv[i, b, :, :n] = x
            st[i, b, :, :n] = s
    return kv[0], kv[1], st


def reference_attention(
    cache: PagedECCCache, layer: int, q: torch.Tensor, sm_scale: float, counters: torch.Tensor | None
) -> torch.Tensor:
    """Torch twin of the fused kernel: decode each sequence, then SDPA (GQA by repeating KV heads)."""
    from ecc_kv.cache import sdpa_decode

    out = torch.zeros_like(q)  # [B, H_q, D]
    corr = det = 0
    for b, n in enumerate(cache.host_lengths):
        if n == 0:
            continue
        k, _, ck, dk = decode_sequence(cache, layer, b, "k", q.dtype)
        v, _, cv, dv = decode_sequence(cache, layer, b, "v", q.dtype)
        corr += ck + cv
        det += dk + dv
        out[b] = sdpa_decode(q[b], k, v, sm_scale)
    if counters is not None:
        counters += torch.tensor([corr, det], dtype=counters.dtype, device=counters.device)
    return out


def _pools(cache: PagedECCCache, layers: list[int] | None) -> list[tuple[torch.Tensor, Layout, torch.Tensor]]:
    """(storage [NB, H, BS, W] of one layer and K/V, layout, allocated block indices) for every pool."""
    c = cache.config
    layers = list(range(c.num_layers)) if layers is None else layers
    for layer in layers:
        cache._check_layer(layer)
    main = sorted({blk for t in cache._host_tables for blk in t[c.sink_blocks :]})
    sink = sorted({blk for t in cache._host_tables for blk in t[: c.sink_blocks]})
    out = []
    for layer in layers:
        for which in ("k", "v"):
            out.append((getattr(cache, f"{which}_data")[layer], c.layout, torch.tensor(main, dtype=torch.int64)))
            if c.sink_blocks:
                data = getattr(cache, f"{which}_sink_data")[layer]
                out.append((data, c.sink_layout, torch.tensor(sink, dtype=torch.int64)))
    return out


def inject_storage(
    cache: PagedECCCache, ber: float, seed: int, layers: list[int] | None, model: str, burst_len: int
) -> int:
    """Flip stored codeword bits of every allocated block in place; returns the number of flips.

    Each (layer, K/V, pool) tensor draws its own stream (``stream`` = its index); the words handed
    to ``ecc_kv.faults.inject`` are the logical codewords, so only stored bits can flip.
    """
    from ecc_kv.faults import inject

    backend = "triton" if cache.device.type == "cuda" else "torch"
    total = 0
    for i, (data, layout, blocks) in enumerate(_pools(cache, layers)):
        if blocks.numel() == 0:
            continue
        blocks = blocks.to(data.device)
        words = layout.bytes_to_words(data[blocks])  # [nb, H, BS, NW]
        flipped, n = inject(
            words, bits_per_word=layout.word_bits, ber=ber, seed=seed, model=model, burst_len=burst_len,
            backend=backend, stream=i,
        )  # fmt: skip
        data[blocks] = layout.words_to_bytes(flipped.to(torch.int32))
        total += int(n)
    return total


def scrub_storage(cache: PagedECCCache, layers: list[int] | None) -> dict[str, int]:
    """Decode every allocated codeword; write corrected ones back re-encoded, leave detected ones."""
    out = {"corrected": 0, "detected": 0, "rewritten": 0}
    for data, layout, blocks in _pools(cache, layers):
        if layout.codec is None or blocks.numel() == 0:
            continue
        blocks = blocks.to(data.device)
        words = layout.bytes_to_words(data[blocks])  # [nb, H, BS, NW]
        codes, status = layout.decode(words)
        fixed = torch.where(status == 1, layout.encode(codes), words)
        out["corrected"] += int((status == 1).sum())
        out["detected"] += int((status == 2).sum())
        out["rewritten"] += int((fixed != words).sum())
        data[blocks] = layout.words_to_bytes(fixed)
    return out
