"""``QuantKVCache``: generation with the quantized-KV modes (uniform, KIVI, QAQ), real packed storage.

The full-forward evaluation (``ecc_kv.kv_quant_modes.quantized_kv``) round-trips a whole
sequence at once. Generation needs a cache that grows: this transformers ``Cache`` keeps, per
layer, what the mode really stores and appends each step's tokens as they arrive:

- ``int1`` .. ``int8``: one packed chunk per write (the prompt, then one per decode step);
- ``kivi2`` / ``kivi4``: an :class:`ecc_kv.kivi.KiviLayer` (keys wait in the fp16 residual until
  a block fills, values leave the window one token at a time);
- ``qaq``: an :class:`ecc_kv.qaq.QAQLayer`: the prompt gets the paper's bits from its own
  queries, new tokens their key bits at once and ``bits_max`` values until ``requant_every``
  steps re-allocate everything from the exact copy held on the CPU (``KVQuantConfig.requant_every``);
- ``fp16``: the exact tensors.

Faults persist as in DRAM: every packed chunk is corrupted once, when written (through the ECC
when ``cfg.codec`` is set), and read back unchanged afterwards; a QAQ re-allocation writes new
chunks, which get fresh faults. QAQ needs the layer's queries, which ``Cache.update`` does not
see, so ``update`` only records the new K/V and the attention function (``ecc_kv_quant``, active
inside ``quantized_kv``) completes the write with the queries and attends to what the layer holds.

    with quantized_kv(model, cfg) as st:
        cache = QuantKVCache(model, cfg, st.stats)
        out = model.generate(ids, past_key_values=cache, max_new_tokens=20)
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache

from ecc_kv.bitpack import PackedTensor, quantize_pack, unpack_dequantize
from ecc_kv.hf.cache import AppendOnlyLayer
from ecc_kv.kivi import KiviLayer, dequant_keys
from ecc_kv.kv_quant_modes import KVQuantConfig, KVStats, corrupt_packed
from ecc_kv.qaq import QAQLayer

# layer index -> (the key tensor update() returned, the layer that must finish the write)
PENDING: dict[int, tuple[torch.Tensor, QuantKVLayer]] = {}


class QuantKVLayer(AppendOnlyLayer):
    """One model layer of a :class:`QuantKVCache` (the module docstring says what it stores)."""

    WHAT = "QuantKVCache"

    def __init__(self, owner: QuantKVCache, layer_idx: int) -> None:
        super().__init__(layer_idx)
        self.owner = owner
        self.writes = 0
        self.store: Any = None
        self.chunks: list[tuple[PackedTensor, PackedTensor]] = []  # uniform modes
        self._written: set[int] = set()  # ids of packed chunks already faulted
        self._reads: dict[int, tuple[PackedTensor, torch.Tensor]] = {}  # id -> (chunk, its dequantized values)
        self._live: set[int] = set()  # chunks read in this step

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Record the new ``key_states, value_states [B, H_kv, T_new, D]``; attention completes the write."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.length += int(key_states.shape[2])
        PENDING[self.layer_idx] = (key_states, self)
        return key_states, value_states

    def append(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens (q: [B, H_q, T_new, D]) and return the layer's K, V as attention reads them."""
        cfg, dt = self.owner.cfg, k.dtype
        method = cfg.method
        if method == "fp16":
            self.keys = torch.cat([self.keys, k], dim=-2)
            self.values = torch.cat([self.values, v], dim=-2)
            self.owner.stats.add_packed("k", [], k.numel(), None)
            self.owner.stats.add_packed("v", [], v.numel(), None)
            return self.keys, self.values
        if method == "uniform":
            pk = quantize_pack(k, cfg.bits, cfg.group_size, cfg.scheme, cfg.outliers, backend=cfg.backend)
            pv = quantize_pack(v, cfg.bits, cfg.group_size, cfg.scheme, cfg.outliers, backend=cfg.backend)
            self.chunks.append((pk, pv))
            self.chunks = self._fault_pairs(self.chunks)
            ks, vs = self._read_pairs(self.chunks, dt)
        elif method == "kivi":
            if self.store is None:
                self.store = KiviLayer(cfg.bits, cfg.kivi_group, cfg.kivi_residual, cfg.backend)
            layer: KiviLayer = self.store
            layer.append(k, v)
            layer.k_chunks = self._fault_list(layer.k_chunks, 0)
            layer.v_chunks = self._fault_list(layer.v_chunks, 1)
            ks = [self._read(p, dt, keys_by_channel=True) for p in layer.k_chunks] + [layer.k_res.to(dt)]
            vs = [self._read(p, dt) for p in layer.v_chunks] + [layer.v_res.to(dt)]
        else:
            if self.store is None:
                self.store = QAQLayer(cfg.qaq, scaling, requant_every=cfg.requant_every, backend=cfg.backend)
            qaq: QAQLayer = self.store
            qaq.append(q, k, v)
            qaq.chunks = self._fault_pairs(qaq.chunks)
            ks, vs = self._read_pairs(qaq.chunks, dt)
        self.writes += 1
        # drop the reads of chunks the layer no longer holds (a QAQ re-allocation replaces all of them)
        self._reads = {i: r for i, r in self._reads.items() if i in self._live}
        self._live = set()
        return torch.cat(ks, dim=-2), torch.cat(vs, dim=-2)

    def _read_pairs(self, pairs: list[tuple[PackedTensor, PackedTensor]], dtype: torch.dtype) -> tuple[list, list]:
        return [self._read(a, dtype) for a, _ in pairs], [self._read(b, dtype) for _, b in pairs]

    def _read(self, p: PackedTensor, dtype: torch.dtype, keys_by_channel: bool = False) -> torch.Tensor:
        # stored chunks never change after their one write: each is dequantized once, then reused
        hit = self._reads.get(id(p))
        if hit is None or hit[0] is not p or hit[1].dtype != dtype:
            be = self.owner.cfg.backend
            x = dequant_keys(p, dtype, be) if keys_by_channel else unpack_dequantize(p, dtype, be)
            hit = self._reads[id(p)] = (p, x)
        self._live.add(id(p))
        return hit[1]

    def _fault(self, p: PackedTensor, which: int) -> PackedTensor:
        # a chunk not seen before was just written: account its bytes, corrupt it once, remember it
        cfg, stats = self.owner.cfg, self.owner.stats
        stats.add_packed("kv"[which], [p], 0, cfg.codec)
        seed = cfg.seed * 1_000_003 + 7919 * self.writes + 2 * self.layer_idx + which
        p2, counts = corrupt_packed(p, cfg, seed * 31 + len(self._written))
        for key, val in counts.items():
            stats.add(key, val)
        self._written.add(id(p2))
        return p2

    def _fault_list(self, chunks: list[PackedTensor], which: int) -> list[PackedTensor]:
        return [p if id(p) in self._written else self._fault(p, which) for p in chunks]

    def _fault_pairs(self, chunks: list[tuple[PackedTensor, PackedTensor]]) -> list[tuple[PackedTensor, PackedTensor]]:
        out = []
        for pk, pv in chunks:
            if id(pk) not in self._written:
                pk, pv = self._fault(pk, 0), self._fault(pv, 1)
            out.append((pk, pv))
        return out

    def stored_bytes(self) -> int:
        """Bytes the layer holds: packed chunks (all parts) plus fp16 tensors."""
        parts: list[PackedTensor] = [p for pair in self.chunks for p in pair]
        extra = 0
        if isinstance(self.store, KiviLayer):
            parts += self.store.k_chunks + self.store.v_chunks
            extra = 2 * (self.store.k_res.numel() + self.store.v_res.numel())
        elif isinstance(self.store, QAQLayer):
            parts += [p for pair in self.store.chunks for p in pair]
        elif self.owner.cfg.method == "fp16" and self.is_initialized:
            extra = 2 * (self.keys.numel() + self.values.numel())
        return int(sum(p.nbytes()["total"] for p in parts)) + extra

    def reset(self) -> None:
        self.writes = 0
        self.store = None
        self.chunks = []
        self._written = set()
        self._reads = {}
        self._live = set()
        super().reset()


class QuantKVCache(Cache):
    """A transformers ``Cache`` that stores every layer's K/V in a quantized-KV mode as tokens arrive.

    Use it inside ``ecc_kv.kv_quant_modes.quantized_kv(model, cfg)`` (its attention function
    completes every write); ``stats`` accumulates the bytes and bits of every chunk written (a
    QAQ re-allocation counts again) and the fault counts. Reconstruction error (``mse_*``,
    ``attn_tv``) is measured by the full-forward evaluation, not here: it stays 0 in ``stats``.
    """

    def __init__(self, model: Any, cfg: KVQuantConfig, stats: KVStats | None = None) -> None:
        if not isinstance(cfg, KVQuantConfig):
            raise TypeError(f"cfg must be a KVQuantConfig, got {type(cfg).__name__}")
        text_cfg = model.config.get_text_config(decoder=True)
        self.cfg = cfg
        self.stats = stats if stats is not None else KVStats()
        self.num_layers = int(text_cfg.num_hidden_layers)
        super().__init__(layers=[QuantKVLayer(self, i) for i in range(self.num_layers)])

    def stored_bytes(self) -> int:
        """Bytes held by all layers (codes, widths, scales, zero points, outliers, fp16 residuals)."""
        return sum(layer.stored_bytes() for layer in self.layers)
