"""Paged, ECC-protected INT4 KV cache: block tables, slot mapping, storage, faults, scrub.

The storage a serving system would keep: K and V of every layer live in fixed-size
blocks of ``block_size`` tokens; each sequence owns a block table mapping its logical
blocks to physical blocks, and every new token gets a *slot*
(``physical_block * block_size + offset``). Values are quantized to INT4 (per token,
head and optional group; fp16 scales, see ``ecc_kv.quant``), each INT4 value is
protected by the mode's codec, and the codewords are packed at the codec's nominal
rate (``ecc_kv.cache_layout``). Bit errors injected into the stored bytes persist
(as in DRAM) until a scrub writes corrected codewords back.

Reads: ``attend`` runs the fused Triton decode-attention kernel
(``kernels.paged_attention``) or its torch twin (decode the whole cache, then
``scaled_dot_product_attention``); ``read`` returns the decoded K/V for inspection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ecc_kv.cache_layout import Layout, get_layout
from ecc_kv.modes import get_mode
from ecc_kv.quant import check_backend, dequantize_int4, quantize_int4, resolve_group_size

# above this stored BER most 64-token Hamming(8,4) tiles hold a non-codeword (1 - (1 - p)^65536: 12% of
# tiles at 2e-6, 48% at 1e-5), and lazy correction, which reloads such a tile, loses to correcting every
# tile (H100, Llama 32 x 8k at BER 1e-4: 0.586 ms lazy, 0.372 ms eager; 0.307 ms lazy on a clean cache;
# docs/paged_cache.md): the break-even is about 23% of tiles
LAZY_MAX_BER = 2e-6

SUPPORTED_MODES = (
    "int4",
    "int4-hamming",
    "int4-hamming84",
    "int4-hamming84-interp",
    "int12-golay",
    "adaptive",
)


@dataclass(frozen=True)
class ECCCacheConfig:
    """Shape and protection of a paged ECC KV cache.

    ``mode`` is a name from ``ecc_kv.modes`` (fp16 is served by the model's own cache).
    ``sink_blocks``: with ``mode="adaptive"``, the first ``sink_blocks`` logical blocks
    of every sequence (the attention sinks) are stored Golay-protected in a separate
    sink pool, the rest Hamming(8,4) in the main pool. ``num_blocks`` counts main-pool
    blocks; the sink pool has ``sink_blocks`` blocks per sequence slot of the cache.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    num_blocks: int
    block_size: int = 16
    mode: str = "int4-hamming84"
    sink_blocks: int = 0
    group_size: int | None = None
    scale_dtype: torch.dtype = torch.float16

    def __post_init__(self) -> None:
        for key in ("num_layers", "num_kv_heads", "head_dim", "num_blocks", "block_size"):
            val = getattr(self, key)
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"ECCCacheConfig.{key}={val!r} must be a positive int")
        if self.mode not in SUPPORTED_MODES:
            get_mode(self.mode)  # unknown names: the registry's error lists every mode
            raise ValueError(
                f"ECCCacheConfig.mode={self.mode!r} is not stored by the paged cache; choose one of {SUPPORTED_MODES}"
            )
        if isinstance(self.sink_blocks, bool) or not isinstance(self.sink_blocks, int) or self.sink_blocks < 0:
            raise ValueError(f"ECCCacheConfig.sink_blocks={self.sink_blocks!r} must be an int >= 0")
        if self.mode == "adaptive" and self.sink_blocks < 1:
            raise ValueError("ECCCacheConfig.mode='adaptive' needs sink_blocks >= 1 (Golay-protected sink blocks)")
        if self.mode != "adaptive" and self.sink_blocks:
            raise ValueError(f"ECCCacheConfig.sink_blocks={self.sink_blocks} needs mode='adaptive', got {self.mode!r}")
        if self.head_dim % 2:
            raise ValueError(f"ECCCacheConfig.head_dim={self.head_dim} must be even (two INT4 codes per byte)")
        if self.mode == "int4-hamming" and self.head_dim % 8:
            raise ValueError(f"ECCCacheConfig.head_dim={self.head_dim} must be a multiple of 8 for int4-hamming")
        resolve_group_size(self.head_dim, self.group_size)
        if self.scale_dtype != torch.float16:
            raise ValueError(f"ECCCacheConfig.scale_dtype={self.scale_dtype} must be torch.float16 (ecc_kv.quant)")

    # --- derived properties -------------------------------------------------------------
    @property
    def codec(self) -> str | None:
        """Codec of the main pool (None: raw INT4)."""
        return get_mode(self.mode).codec

    @property
    def sink_codec(self) -> str | None:
        """Codec of the sink pool (adaptive mode only)."""
        return get_mode(self.mode).sink_codec

    @property
    def interpolate(self) -> bool:
        return get_mode(self.mode).interpolate

    @property
    def num_groups(self) -> int:
        return self.head_dim // resolve_group_size(self.head_dim, self.group_size)

    @property
    def layout(self) -> Layout:
        return get_layout(self.codec, self.head_dim)

    @property
    def sink_layout(self) -> Layout | None:
        return get_layout(self.sink_codec, self.head_dim) if self.sink_codec else None

    @property
    def sink_tokens(self) -> int:
        return self.sink_blocks * self.block_size

    def _bytes_per_token_head(self, layout: Layout) -> int:
        return layout.row_bytes + self.num_groups * 2  # codewords + fp16 scales

    def bytes_per_token(self, context_len: int | None = None) -> float:
        """Stored bytes per token over all layers, K and V, codewords and scales.

        With a sink pool the first ``sink_tokens`` tokens cost more; ``context_len``
        averages over a sequence of that length (None: the main pool's rate).
        """
        main = self._bytes_per_token_head(self.layout)
        per_tok = float(main)
        if self.sink_layout is not None and context_len is not None:
            if context_len < 1:
                raise ValueError(f"context_len={context_len} must be >= 1")
            n_sink = min(context_len, self.sink_tokens)
            sink = self._bytes_per_token_head(self.sink_layout)
            per_tok = (n_sink * sink + (context_len - n_sink) * main) / context_len
        return per_tok * 2 * self.num_layers * self.num_kv_heads

    def overhead(self, context_len: int | None = None) -> dict[str, float]:
        """Bytes per token relative to an fp16 cache and to raw INT4 with the same scales."""
        fp16 = 2 * self.num_layers * self.num_kv_heads * self.head_dim * 2
        int4 = 2 * self.num_layers * self.num_kv_heads * (self.head_dim // 2 + self.num_groups * 2)
        b = self.bytes_per_token(context_len)
        return {"bytes_per_token": b, "vs_fp16": b / fp16, "vs_int4": b / int4}


class PagedECCCache:
    """Paged ECC KV cache for up to ``max_seqs`` sequences (batch slots 0..max_seqs-1).

    Storage per layer, head-major inside a block so that one (sequence, head) reads
    contiguous rows:

    - ``k_data[l], v_data[l]``: uint8 ``[num_blocks, H_kv, block_size, row_bytes]``
    - ``k_scale[l], v_scale[l]``: fp16 ``[num_blocks, H_kv, block_size, n_groups]``
    - adaptive only: ``k_sink_data``/``k_sink_scale`` (and V) with ``max_seqs * sink_blocks``
      blocks; sequence ``b``'s sink block ``j`` is sink-pool block ``b * sink_blocks + j``.

    ``block_tables [max_seqs, max_blocks_per_seq]`` int32 (indices into the pool the
    logical block lives in) and ``lengths [max_seqs]`` int32 live on the device; host
    mirrors avoid synchronisations in decode loops.
    """

    def __init__(
        self,
        config: ECCCacheConfig,
        max_seqs: int,
        device: str | torch.device = "cpu",
        block_order_seed: int | None = None,
    ) -> None:
        """``block_order_seed``: hand out free blocks in a random order (as a long-running server
        would), so block tables are not the identity; None hands out blocks 0, 1, 2, ..."""
        if isinstance(max_seqs, bool) or not isinstance(max_seqs, int) or max_seqs < 1:
            raise ValueError(f"max_seqs={max_seqs!r} must be a positive int")
        self.config = config
        self.max_seqs = max_seqs
        self.device = torch.device(device)
        c = config
        shape = (c.num_layers, c.num_blocks, c.num_kv_heads, c.block_size)
        row = c.layout.row_bytes
        self.k_data = torch.zeros(*shape, row, dtype=torch.uint8, device=self.device)
        self.v_data = torch.zeros_like(self.k_data)
        self.k_scale = torch.zeros(*shape, c.num_groups, dtype=torch.float16, device=self.device)
        self.v_scale = torch.zeros_like(self.k_scale)
        self.k_sink_data = self.v_sink_data = self.k_sink_scale = self.v_sink_scale = None
        if c.sink_layout is not None:
            sshape = (c.num_layers, max_seqs * c.sink_blocks, c.num_kv_heads, c.block_size)
            self.k_sink_data = torch.zeros(*sshape, c.sink_layout.row_bytes, dtype=torch.uint8, device=self.device)
            self.v_sink_data = torch.zeros_like(self.k_sink_data)
            self.k_sink_scale = torch.zeros(*sshape, c.num_groups, dtype=torch.float16, device=self.device)
            self.v_sink_scale = torch.zeros_like(self.k_sink_scale)
        self.max_blocks_per_seq = c.sink_blocks + c.num_blocks
        self.block_tables = torch.zeros(max_seqs, self.max_blocks_per_seq, dtype=torch.int32, device=self.device)
        self.lengths = torch.zeros(max_seqs, dtype=torch.int32, device=self.device)
        self._host_tables: list[list[int]] = [[] for _ in range(max_seqs)]
        self._host_lengths = [0] * max_seqs
        self._free = list(range(c.num_blocks - 1, -1, -1))  # pop() hands out block 0 first
        if block_order_seed is not None:
            gen = torch.Generator().manual_seed(block_order_seed)
            self._free = torch.randperm(c.num_blocks, generator=gen).tolist()
        self._step_slots: torch.Tensor | None = None
        # running totals of what was done to the stored bytes (read counts go to attend(counters=...))
        self.stats = {"injected_flips": 0, "scrub_rewritten": 0}
        self.fault_rate = 0.0  # highest BER injected into the stored codewords (see attend's lazy)

    # --- sequence and block management ---------------------------------------------------
    @property
    def host_lengths(self) -> list[int]:
        return list(self._host_lengths)

    def reset(self) -> None:
        """Forget every sequence (storage is not cleared; lengths and tables are)."""
        for b in range(self.max_seqs):
            self.free(b)
        self._step_slots = None

    def free(self, seq: int) -> None:
        """Return sequence ``seq``'s main-pool blocks to the free list and set its length to 0."""
        self._check_seq(seq)
        nsink = self.config.sink_blocks
        self._free.extend(reversed(self._host_tables[seq][nsink:]))
        self._host_tables[seq] = []
        self._host_lengths[seq] = 0
        self.lengths[seq] = 0

    def _check_seq(self, seq: int) -> None:
        if not 0 <= seq < self.max_seqs:
            raise ValueError(f"sequence index {seq} out of range [0, {self.max_seqs})")

    def allocate(self, n_new: int | list[int]) -> torch.Tensor:
        """Reserve slots for ``n_new`` new tokens per sequence and advance the lengths.

        ``n_new``: one count for every sequence, or a list of ``max_seqs`` counts.
        Returns the slot mapping ``[sum(n_new)]`` int64 in (sequence, token) order. Main
        pool slots are ``block * block_size + offset``; sink-pool slots (adaptive) are
        offset by ``num_blocks * block_size``, one slot space for the write kernel.
        """
        counts = [n_new] * self.max_seqs if isinstance(n_new, int) else list(n_new)
        if len(counts) != self.max_seqs or any((not isinstance(n, int)) or n < 0 for n in counts):
            raise ValueError(f"n_new={n_new!r} must be an int >= 0 or a list of {self.max_seqs} such ints")
        c = self.config
        bs, nsink = c.block_size, c.sink_blocks
        main_slots = c.num_blocks * bs
        extra = 0  # main-pool blocks this call needs: check before touching any table
        for b, n in enumerate(counts):
            need = -(-(self._host_lengths[b] + n) // bs)
            if need > self.max_blocks_per_seq:
                raise ValueError(f"sequence {b} would reach {self._host_lengths[b] + n} tokens, above the table capacity")
            extra += max(0, need - max(len(self._host_tables[b]), nsink))
        if extra > len(self._free):
            raise RuntimeError(
                f"out of cache blocks: {extra} more needed, {len(self._free)} free of num_blocks={c.num_blocks}"
            )
        slots: list[torch.Tensor] = []
        changed = False
        for b, n in enumerate(counts):
            table = self._host_tables[b]
            start = self._host_lengths[b]
            need = -(-(start + n) // bs)
            while len(table) < need:
                j = len(table)
                if j < nsink:
                    table.append(b * nsink + j)
                else:
                    table.append(self._free.pop())
                changed = True
            if n:
                t = torch.arange(start, start + n)
                j = t // bs
                s = torch.tensor(table, dtype=torch.int64)[j] * bs + t % bs
                slots.append(torch.where(j < nsink, s + main_slots, s))
            self._host_lengths[b] = start + n
        if changed:
            rows = [t + [0] * (self.max_blocks_per_seq - len(t)) for t in self._host_tables]
            self.block_tables.copy_(torch.tensor(rows, dtype=torch.int32))
        self.lengths.copy_(torch.tensor(self._host_lengths, dtype=torch.int32))
        flat = torch.cat(slots) if slots else torch.zeros(0, dtype=torch.int64)
        return flat.to(self.device)

    # --- writes ----------------------------------------------------------------------------
    def write(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor, backend: str = "triton"
    ) -> None:
        """Quantize, encode and scatter new K/V rows into their slots.

        k, v: ``[N, H_kv, D]`` (fp16/bf16/fp32), slot_mapping: ``[N]`` int64 from ``allocate``.
        """
        check_backend(backend)
        self._check_layer(layer)
        c = self.config
        want = (slot_mapping.shape[0], c.num_kv_heads, c.head_dim)
        for name, x in (("k", k), ("v", v)):
            if tuple(x.shape) != want:
                raise ValueError(f"{name}.shape={tuple(x.shape)} must be {want} ([N, H_kv, D], N = len(slot_mapping))")
        if slot_mapping.numel() == 0:
            return
        if backend == "triton":
            from kernels.cache_write import cache_write

            for x, data, scale, sdata, sscale in self._kv_storage(layer, k, v):
                cache_write(
                    x, slot_mapping, data, scale, sdata, sscale,
                    codec=c.codec, sink_codec=c.sink_codec, group_size=c.head_dim // c.num_groups,
                )  # fmt: skip
        else:
            for x, data, scale, sdata, sscale in self._kv_storage(layer, k, v):
                cache_write_torch(x, slot_mapping, data, scale, sdata, sscale, c)

    def _kv_storage(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> list[tuple]:
        sk = self.k_sink_data[layer] if self.k_sink_data is not None else None
        sks = self.k_sink_scale[layer] if self.k_sink_scale is not None else None
        sv = self.v_sink_data[layer] if self.v_sink_data is not None else None
        svs = self.v_sink_scale[layer] if self.v_sink_scale is not None else None
        return [
            (k, self.k_data[layer], self.k_scale[layer], sk, sks),
            (v, self.v_data[layer], self.v_scale[layer], sv, svs),
        ]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, backend: str = "triton") -> torch.Tensor:
        """Transformers-style append: ``k, v [B=max_seqs, H_kv, T, D]``, every sequence gets T tokens.

        Layer 0 allocates the step's slots; the other layers reuse them. Returns the slots.
        """
        c = self.config
        if k.dim() != 4 or k.shape[0] != self.max_seqs or k.shape[1] != c.num_kv_heads:
            raise ValueError(f"k.shape={tuple(k.shape)} must be [{self.max_seqs}, {c.num_kv_heads}, T, {c.head_dim}]")
        if layer == 0 or self._step_slots is None:
            self._step_slots = self.allocate(int(k.shape[2]))
        flat = lambda x: x.transpose(1, 2).reshape(-1, c.num_kv_heads, c.head_dim)  # noqa: E731 # [B*T, H, D]
        self.write(layer, flat(k), flat(v), self._step_slots, backend=backend)
        return self._step_slots

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.config.num_layers:
            raise ValueError(f"layer={layer} out of range [0, {self.config.num_layers})")

    # --- reads -----------------------------------------------------------------------------
    def read(self, layer: int, dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode every sequence's K and V (torch reference path; corrects, interpolates, dequantizes).

        Returns ``k, v [max_seqs, H_kv, T_max, D]`` (zeros past each length) and the status
        ``[2, max_seqs, H_kv, T_max, D]`` uint8 per value (0 clean, 1 corrected, 2 detected).
        """
        self._check_layer(layer)
        from ecc_kv.cache_reference import decode_sequences

        return decode_sequences(self, layer, dtype)

    def attend(
        self,
        layer: int,
        q: torch.Tensor,
        sm_scale: float | None = None,
        backend: str = "triton",
        counters: torch.Tensor | None = None,
        num_splits: int | None = None,
        block_n: int = 64,
        num_warps: int = 4,
        lazy: bool | None = None,
    ) -> torch.Tensor:
        """Decode attention for one query token per sequence: ``q [max_seqs, H_q, D] -> [max_seqs, H_q, D]``.

        ``counters``: optional int64 ``[2]`` tensor; corrected and detected codeword counts
        of this call are added to it (triton backend; the torch backend adds its own).
        ``num_splits``: split-KV partitions per (sequence, head) (None: enough to fill the GPU).
        ``block_n`` (tokens per tile, a power of two >= 16) and ``num_warps`` tune the kernel.
        ``lazy``: Hamming(8,4) corrections only in tiles that hold a non-codeword (None: lazy
        while the stored cache has seen faults at a rate below ``LAZY_MAX_BER``, see
        ``fault_rate``; above it most tiles hold an error and correcting every tile is faster).
        """
        check_backend(backend)
        self._check_layer(layer)
        c = self.config
        if q.dim() != 3 or q.shape[0] != self.max_seqs or q.shape[2] != c.head_dim or q.shape[1] % c.num_kv_heads:
            raise ValueError(
                f"q.shape={tuple(q.shape)} must be [{self.max_seqs}, H_q, {c.head_dim}] with H_q a multiple of {c.num_kv_heads}"
            )
        scale = 1.0 / math.sqrt(c.head_dim) if sm_scale is None else float(sm_scale)
        if backend == "torch":
            from ecc_kv.cache_reference import reference_attention

            return reference_attention(self, layer, q, scale, counters)
        from kernels.paged_attention import paged_decode_attention

        sink = None
        if c.sink_layout is not None:
            sink = (self.k_sink_data[layer], self.k_sink_scale[layer], self.v_sink_data[layer], self.v_sink_scale[layer])
        return paged_decode_attention(
            q, self.k_data[layer], self.k_scale[layer], self.v_data[layer], self.v_scale[layer],
            self.block_tables, self.lengths, sm_scale=scale, codec=c.codec, interpolate=c.interpolate,
            sink=sink, sink_codec=c.sink_codec, sink_tokens=c.sink_tokens, counters=counters,
            num_splits=num_splits, max_len=max(self._host_lengths), block_n=block_n, num_warps=num_warps,
            lazy=self.lazy_correction() if lazy is None else bool(lazy),
        )  # fmt: skip

    def lazy_correction(self) -> bool:
        """Whether ``attend`` corrects lazily by default: the highest BER injected into the stored
        cache (``fault_rate``) is below ``LAZY_MAX_BER``."""
        return self.fault_rate < LAZY_MAX_BER

    # --- faults and scrub ----------------------------------------------------------------------
    def inject_faults(
        self, ber: float, seed: int, layers: list[int] | None = None, model: str = "bsc", burst_len: int = 2
    ) -> int:
        """Flip stored bits of every allocated block (K and V codewords; scales are untouched).

        Errors persist: later reads see them until ``scrub``. Returns the number of flips.
        """
        from ecc_kv.cache_reference import inject_storage

        n = inject_storage(self, ber, seed, layers, model, burst_len)
        self.stats["injected_flips"] += n
        self.note_faults(ber)
        return n

    def note_faults(self, ber: float) -> None:
        """Record that stored codewords were exposed to faults at ``ber`` (raises ``fault_rate``;
        callers that inject into the storage themselves, like the transformers shim, call it)."""
        self.fault_rate = max(self.fault_rate, float(ber))

    def scrub(self, layers: list[int] | None = None) -> dict[str, int]:
        """Decode every allocated codeword and write corrected codewords back (detected ones stay)."""
        from ecc_kv.cache_reference import scrub_storage

        out = scrub_storage(self, layers)
        self.stats["scrub_rewritten"] += out["rewritten"]
        return out


def cache_write_torch(
    x: torch.Tensor,
    slot_mapping: torch.Tensor,
    data: torch.Tensor,
    scale: torch.Tensor,
    sink_data: torch.Tensor | None,
    sink_scale: torch.Tensor | None,
    config: ECCCacheConfig,
) -> None:
    """Torch twin of ``kernels.cache_write.cache_write``: quantize, encode, pack, scatter.

    x: ``[N, H, D]``; data: ``[NB, H, BS, W]``; scale: ``[NB, H, BS, NG]``; slots < 0 are skipped;
    slots >= NB * BS address the sink pool (adaptive).
    """
    c = config
    bs = c.block_size
    nb = data.shape[0]
    codes, scales = quantize_int4(x, group_size=c.group_size)  # [N, H, D], [N, H, NG]
    slots = slot_mapping.to(torch.int64)
    pools = [(data, scale, c.layout, slots >= 0, slots)]
    if sink_data is not None:
        is_sink = slots >= nb * bs
        pools = [(data, scale, c.layout, (slots >= 0) & ~is_sink, slots), (sink_data, sink_scale, c.sink_layout, is_sink, slots - nb * bs)]
    for dst, dst_scale, layout, sel, s in pools:
        if not bool(sel.any()):
            continue
        s = s[sel]
        blk, off = s // bs, s % bs
        dst[blk, :, off] = layout.pack(codes[sel])  # [n, H, W]
        dst_scale[blk, :, off] = scales[sel]


def dequantized_rows(codes: torch.Tensor, scales: torch.Tensor, config: ECCCacheConfig, dtype: torch.dtype) -> torch.Tensor:
    """Dequantize decoded codes ``[..., D]`` with ``scales [..., NG]`` (the cache's group size)."""
    return dequantize_int4(codes, scales, group_size=config.group_size, dtype=dtype)


def sdpa_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One query per sequence against ``k, v [H_kv, T, D]`` with GQA: ``q [H_q, D] -> [H_q, D]``."""
    g = q.shape[0] // k.shape[0]
    k = k.repeat_interleave(g, dim=0)  # [H_q, T, D]
    v = v.repeat_interleave(g, dim=0)
    out = F.scaled_dot_product_attention(q[:, None, :].float(), k.float(), v.float(), scale=scale)  # [H_q, 1, D]
    return out[:, 0, :].to(q.dtype)
