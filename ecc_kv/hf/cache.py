"""``ECCCache``: a transformers ``Cache`` whose layers store K/V protected, with persistent faults.

Storage per mode:

- paged modes (``int4``, ``int4-hamming``, ``int4-hamming84``, ``int4-hamming84-interp``,
  ``int12-golay``, ``adaptive``): one :class:`ecc_kv.cache.PagedECCCache` for all layers holds
  the codewords. Each step writes the new tokens (quantize, encode, pack), then flips bits of
  *those new slots only* at ``ber``: a stored word is faulted once, when written, and the
  error stays for every later read (DRAM-like). Reads decode the whole sequence (correct,
  interpolate, dequantize); on CUDA with the triton backend decode steps skip the read and
  the attention function runs the fused paged decode kernel on the codewords.
- ``fp16`` and ``int4-msb-secded``: new tokens go through ``kv_protect.roundtrip`` once at
  write and the reconstructed values are kept (decoding is deterministic, so this equals
  storing the faulted words and decoding at every read).

Beam search reordering is not supported (the paged cache owns one slot per batch row).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from ecc_kv.hf.attention import ECCState, Pending, protect_tensor
from ecc_kv.hf.config import ECCShimConfig, mix_seed


def _paged_modes() -> tuple[str, ...]:
    from ecc_kv.cache import SUPPORTED_MODES

    return SUPPORTED_MODES


def inject_new_slots(paged: Any, layer: int, slots: torch.Tensor, cfg: ECCShimConfig, seed: int, backend: str) -> int:
    """Flip stored bits of the K and V rows at ``slots`` (one layer) in place; returns bits flipped."""
    from ecc_kv.faults import inject

    if cfg.ber == 0 or slots.numel() == 0:
        return 0
    c = paged.config
    bs, n_main = c.block_size, c.num_blocks * c.block_size
    paged.note_faults(cfg.ber)  # the decode kernel's lazy correction follows the stored fault rate
    total = 0
    for which_i, which in enumerate(("k", "v")):
        pools = [(getattr(paged, f"{which}_data")[layer], c.layout, slots[slots < n_main], 0)]
        if c.sink_layout is not None:
            sink = slots[slots >= n_main] - n_main
            pools.append((getattr(paged, f"{which}_sink_data")[layer], c.sink_layout, sink, 1))
        for data, layout, sl, pool in pools:
            if sl.numel() == 0:
                continue
            blk, off = sl // bs, sl % bs
            words = layout.bytes_to_words(data[blk, :, off])  # [n, H, NW]
            flipped, n = inject(
                words, layout.word_bits, float(cfg.ber), mix_seed(seed, which_i, pool),
                model=cfg.error_model, burst_len=cfg.burst_len, backend=backend,
            )  # fmt: skip
            data[blk, :, off] = layout.words_to_bytes(flipped.to(words.dtype))
            total += int(n)
    return total


def read_paged(paged: Any, layer: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """Decode one layer of every sequence: ``k, v [B, H_kv, T, D]`` and the read's counts (torch path)."""
    from ecc_kv.cache_reference import decode_sequence

    ks, vs = [], []
    counts = {"corrected": 0, "detected": 0, "interpolated": 0}
    interp = paged.config.interpolate
    for b in range(paged.max_seqs):
        for which, out in (("k", ks), ("v", vs)):
            x, st, n_corr, n_det = decode_sequence(paged, layer, b, which, dtype)  # x [H, T, D]
            out.append(x)
            counts["corrected"] += n_corr
            counts["detected"] += n_det
            if interp:
                counts["interpolated"] += int((st == 2).sum())
    return torch.stack(ks), torch.stack(vs), counts


class AppendOnlyLayer(DynamicLayer):
    """A cache layer whose storage only grows: it counts its tokens and refuses crop, beam and batch edits.

    Shared by :class:`ECCLayer` and ``ecc_kv.kv_quant_cache.QuantKVLayer``; ``WHAT`` names the cache in errors.
    """

    WHAT = "this cache"

    def __init__(self, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.length = 0

    def get_seq_length(self) -> int:
        return self.length

    def reset(self) -> None:
        self.length = 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(f"{self.WHAT} cannot crop: its storage is append-only")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError(f"{self.WHAT} does not support beam search")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError(f"{self.WHAT} does not support batch expansion; build it for the final batch size")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError(f"{self.WHAT} does not support selecting batch rows")


class ECCLayer(AppendOnlyLayer):
    """One model layer of an :class:`ECCCache` (see the module docstring for the storage)."""

    WHAT = "ECCCache"

    def __init__(self, owner: ECCCache, layer_idx: int) -> None:
        super().__init__(layer_idx)
        self.owner = owner

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new ``key_states, value_states [B, H_kv, T_new, D]``; return what attention reads."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        owner, layer = self.owner, self.layer_idx
        state, cfg = owner.state, owner.state.config
        t_new = int(key_states.shape[2])
        if owner.paged_mode:
            paged = owner.paged_for(key_states, layer)
            backend = cfg.resolved_backend(key_states.device)
            slots = paged.update(layer, key_states, value_states, backend=backend)
            flips = inject_new_slots(paged, layer, slots, cfg, mix_seed(cfg.seed, owner.step, layer), backend)
            state.stats.add(layer, {"bits_flipped": flips, "values": key_states.numel() + value_states.numel()})
            self.length += t_new
            fused = cfg.fused_decode and backend == "triton" and t_new == 1  # CPU: Triton interpreter
            if fused:  # attention reads the codewords itself; hand it only a marker tensor
                state.pending[layer] = Pending(key_states, fused=paged)
                return key_states, value_states
            k, v, counts = read_paged(paged, layer, key_states.dtype)
            state.stats.add(layer, counts)
        else:
            seed = mix_seed(cfg.seed, owner.step, layer)
            k_new, ck = protect_tensor(key_states, cfg, mix_seed(seed, 0))
            v_new, cv = protect_tensor(value_states, cfg, mix_seed(seed, 1))
            state.stats.add(layer, ck)
            state.stats.add(layer, cv)
            self.keys = torch.cat([self.keys, k_new], dim=-2)
            self.values = torch.cat([self.values, v_new], dim=-2)
            self.length += t_new
            k, v = self.keys, self.values
        if layer == owner.num_layers - 1:
            owner.step += 1
        state.pending[layer] = Pending(k)
        return k, v


class ECCCache(Cache):
    """A transformers ``Cache`` storing every layer's K/V in the shim's mode (patched models only).

    ``model``: a model patched with :func:`ecc_kv.patch_model_with_ecc_attention`.
    ``max_cache_len``: tokens per sequence the paged storage must hold (prompt + new tokens).
    """

    def __init__(self, model: Any, max_cache_len: int | None = None) -> None:
        state: ECCState | None = getattr(model, "_ecc_state", None)
        if state is None:
            raise ValueError("ECCCache needs a model patched with patch_model_with_ecc_attention(model, cfg)")
        text_cfg = model.config.get_text_config(decoder=True)
        self.state = state
        self.num_layers = int(text_cfg.num_hidden_layers)
        self.num_kv_heads = int(getattr(text_cfg, "num_key_value_heads", None) or text_cfg.num_attention_heads)
        self.head_dim = int(getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads)
        self.capacity = int(max_cache_len or state.config.max_cache_len)  # not max_cache_len: a Cache property in 5.17
        if self.capacity < 1:
            raise ValueError(f"max_cache_len={max_cache_len!r} must be >= 1")
        self.paged_mode = state.config.mode_name in _paged_modes()
        self.paged: Any = None
        self.step = 0
        super().__init__(layers=[ECCLayer(self, i) for i in range(self.num_layers)])

    def paged_for(self, key_states: torch.Tensor, layer: int) -> Any:
        """The paged storage, created at the first write (batch size and device are known then)."""
        if self.paged is None:
            from ecc_kv.cache import ECCCacheConfig, PagedECCCache

            cfg = self.state.config
            batch = int(key_states.shape[0])
            bs = cfg.block_size
            blocks_per_seq = -(-self.capacity // bs)
            sink = cfg.sink_blocks if cfg.mode_name == "adaptive" else 0
            c = ECCCacheConfig(
                num_layers=self.num_layers, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                num_blocks=batch * blocks_per_seq, block_size=bs, mode=cfg.mode_name, sink_blocks=sink,
                group_size=cfg.group_size,
            )  # fmt: skip
            self.paged = PagedECCCache(c, max_seqs=batch, device=key_states.device)
        elif key_states.shape[0] != self.paged.max_seqs:
            raise ValueError(
                f"batch size changed from {self.paged.max_seqs} to {key_states.shape[0]}; build a new ECCCache"
            )
        return self.paged
