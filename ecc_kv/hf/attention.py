"""The ``ecc`` attention function, the per-model shim state, and the public patch / stats API.

How a patched model's K/V reach attention (transformers calls ``cache.update`` first, then the
attention function registered under ``config._attn_implementation``):

- K/V that come from an :class:`ecc_kv.hf.cache.ECCCache` were stored protected (quantized,
  encoded, faults injected once, as in DRAM) and read back by the cache: attention uses
  them as they are (or, on CUDA decode steps, the fused paged decode kernel reads the
  codewords directly).
- Any other K/V (a forward without a cache, or with a fresh ``DynamicCache``: the full
  forward over a text of the ber_sweep) go through ``ecc_kv.kv_protect.roundtrip`` here,
  once per layer and forward call, before SDPA.

Registration uses transformers' extension points only: ``AttentionInterface.register`` and
``AttentionMaskInterface.register`` (the SDPA mask), then ``model.set_attn_implementation``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from ecc_kv.hf.config import ECCShimConfig, ECCStats, mix_seed

ATTN_NAME = "ecc_kv"

_LAST_STATE: list[weakref.ref] = []  # the most recently patched model's state (for get_ecc_stats())


@dataclass
class Pending:
    """What an ECCCache layer handed to attention this step (matched by tensor identity)."""

    key: torch.Tensor
    fused: Any = None  # the PagedECCCache to read with the fused kernel, or None


@dataclass
class ECCState:
    """Per-model shim state: config, counters, and per-layer call indices that key fault seeds."""

    config: ECCShimConfig
    num_layers: int
    stats: ECCStats = field(default_factory=ECCStats)
    calls: dict[int, int] = field(default_factory=dict)
    pending: dict[int, Pending] = field(default_factory=dict)
    counters: dict[int, torch.Tensor] = field(default_factory=dict)  # fused-kernel [corrected, detected]
    rt_counters: dict[int, torch.Tensor] = field(default_factory=dict)  # Triton round trip [4] (STAT order)
    prev_attn: str | None = None

    def next_seed(self, layer: int, which: int) -> int:
        """Seed of this layer's next protected write (K: which=0, V: which=1)."""
        call = self.calls.get(layer, 0)
        if which == 1:
            self.calls[layer] = call + 1
        return mix_seed(self.config.seed, call, layer, which)

    def protect(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Round-trip ``key, value [B, H, T, D]`` through the mode (stateless full-forward path)."""
        acc = self.rt_counters.get(layer)
        if acc is None and self.config.resolved_backend(key.device) == "triton":
            acc = self.rt_counters[layer] = torch.zeros(4, dtype=torch.int64, device=key.device)
        k_hat, ck = protect_tensor(key, self.config, self.next_seed(layer, 0), acc)
        v_hat, cv = protect_tensor(value, self.config, self.next_seed(layer, 1), acc)
        self.stats.add(layer, ck)
        self.stats.add(layer, cv)
        return k_hat, v_hat

    def reset(self) -> None:
        self.stats.reset()
        self.calls.clear()
        self.pending.clear()
        self.counters.clear()
        self.rt_counters.clear()


def protect_tensor(
    x: torch.Tensor, cfg: ECCShimConfig, seed: int, counters: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, int]]:
    """One K or V tensor ``[B, H, T, D]`` through the mode's full path; returns (x_hat, counts).

    With the triton backend and a ``counters`` tensor (int64 [4]: flipped, corrected, detected,
    interpolated) the fused kernel accumulates its counts there on the device, so a forward pass
    needs no host synchronisation per layer (``get_ecc_stats`` reads them).
    """
    from ecc_kv.kv_protect import roundtrip

    backend = cfg.resolved_backend(x.device)
    if backend == "triton" and counters is not None:
        return _protect_triton_async(x, cfg, seed, counters), {"values": x.numel()}
    x_hat, stats = roundtrip(
        x,
        cfg.mode_name,
        ber=float(cfg.ber),
        seed=seed,
        error_model=cfg.error_model,
        burst_len=cfg.burst_len,
        sink_tokens=cfg.sink_tokens,
        group_size=cfg.group_size,
        backend=backend,
    )
    return x_hat, normalise_counts(stats, x.numel())


def _protect_triton_async(x: torch.Tensor, cfg: ECCShimConfig, seed: int, counters: torch.Tensor) -> torch.Tensor:
    """``kv_protect.roundtrip`` on Triton, counters left on the device (same kernel, same arguments)."""
    from ecc_kv.faults import validate_fault_args
    from ecc_kv.kv_protect import word_kinds
    from ecc_kv.modes import get_mode
    from ecc_kv.quant import resolve_group_size
    from kernels.kv_roundtrip import roundtrip_triton

    mode = get_mode(cfg.mode_name)
    kind, sink_kind = word_kinds(mode)
    validate_fault_args(8, float(cfg.ber), seed, cfg.error_model, cfg.burst_len)
    if x.numel() == 0:
        return x.clone()
    out, _ = roundtrip_triton(
        x, kind=kind, sink_kind=sink_kind, ber=float(cfg.ber), seed=seed, model=cfg.error_model,
        burst_len=cfg.burst_len, sink_tokens=cfg.sink_tokens, group_size=resolve_group_size(x.shape[-1], cfg.group_size),
        scale_faults=False, interpolate=mode.interpolate, window=1, flip_masks=None, stats_out=counters,
    )  # fmt: skip
    return out


def normalise_counts(stats: Any, n_values: int) -> dict[str, int]:
    """Map a round-trip's stats (dict or dataclass) onto the shim's counter names."""
    if not isinstance(stats, dict):
        stats = dict(vars(stats))
    aliases = {
        "bits_flipped": ("bits_flipped", "n_flips", "flips", "injected_flips", "injected"),
        "corrected": ("corrected", "n_corrected"),
        "detected": ("detected", "n_detected"),
        "interpolated": ("interpolated", "n_interpolated"),
    }
    out = {"values": int(n_values)}
    for key, names in aliases.items():
        out[key] = next((int(stats[n]) for n in names if n in stats), 0)
    return out


def _state_of(module: Any) -> ECCState:
    state = getattr(module, "_ecc_state", None)
    if state is None:
        raise RuntimeError(
            f"attention implementation {ATTN_NAME!r} is set but module {type(module).__name__} has no ECC state; "
            f"call ecc_kv.patch_model_with_ecc_attention(model, cfg) instead of setting it by hand"
        )
    return state


def ecc_attention_forward(
    module: Any,
    query: torch.Tensor,  # [B, H_q, T_q, D]
    key: torch.Tensor,  # [B, H_kv, T_kv, D]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """SDPA over protected K/V; see the module docstring for where the protection happens."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    state = _state_of(module)
    layer = int(module.layer_idx)
    pending = state.pending.pop(layer, None)
    if pending is not None and pending.key is key:
        if pending.fused is not None and attention_mask is None and query.shape[2] == 1:
            return _fused_decode(state, layer, pending.fused, query, kwargs.get("scaling")), None
        if pending.fused is not None:  # a mask or several query tokens: read the cache the torch way
            from ecc_kv.hf.cache import read_paged

            key, value, counts = read_paged(pending.fused, layer, query.dtype)
            state.stats.add(layer, counts)
    else:
        key, value = state.protect(layer, key, value)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _fused_decode(state: ECCState, layer: int, paged: Any, query: torch.Tensor, scaling: float | None) -> torch.Tensor:
    """One query token per sequence against the paged ECC cache, in the fused Triton kernel."""
    counters = state.counters.get(layer)
    if counters is None:
        counters = state.counters[layer] = torch.zeros(2, dtype=torch.int64, device=query.device)
    q = query[:, :, 0, :].contiguous()  # [B, H_q, D]
    out = paged.attend(layer, q, sm_scale=scaling, backend="triton", counters=counters)  # [B, H_q, D]
    return out[:, None, :, :]  # [B, 1, H_q, D], the layout SDPA attention functions return


def register() -> str:
    """Register the ``ecc_kv`` attention function and its (SDPA) mask with transformers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, ecc_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    return ATTN_NAME


def _attention_modules(model: Any) -> list[Any]:
    return [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "config") and not hasattr(m, "mlp")]


def patch_model_with_ecc_attention(model: Any, cfg: ECCShimConfig) -> ECCState:
    """Route every attention layer of ``model`` through the ECC KV path described by ``cfg``.

    Patching again swaps the config (counters are kept; ``reset_ecc_cache`` clears them).
    ``model.generate`` gets a thin wrapper that supplies an :class:`ECCCache` when the caller
    passes no ``past_key_values``, so faults persist across decode steps as in DRAM.
    """
    if not isinstance(cfg, ECCShimConfig):
        raise TypeError(f"cfg must be an ECCShimConfig, got {type(cfg).__name__}")
    register()
    text_cfg = model.config.get_text_config(decoder=True)
    state = getattr(model, "_ecc_state", None)
    if state is None:
        state = ECCState(cfg, int(text_cfg.num_hidden_layers), prev_attn=model.config._attn_implementation)
        model._ecc_state = state
    else:
        state.config = cfg
    mods = _attention_modules(model)
    if not mods:
        raise ValueError(f"{type(model).__name__} has no attention modules with a layer_idx; cannot patch it")
    for m in mods:
        m._ecc_state = state
    model.set_attn_implementation(ATTN_NAME)
    if model.config._attn_implementation != ATTN_NAME:
        raise ValueError(f"{type(model).__name__} does not support attention implementations from AttentionInterface")
    _install_generate(model)
    _LAST_STATE[:] = [weakref.ref(state)]
    return state


def unpatch_model(model: Any) -> None:
    """Undo :func:`patch_model_with_ecc_attention` (restores the previous attention implementation)."""
    state = getattr(model, "_ecc_state", None)
    if state is None:
        return
    model.set_attn_implementation(state.prev_attn or "sdpa")
    for m in _attention_modules(model):
        if hasattr(m, "_ecc_state"):
            del m._ecc_state
    if "generate" in vars(model):
        del model.generate
    del model._ecc_state


def _install_generate(model: Any) -> None:
    if "generate" in vars(model):
        return
    original = model.generate  # the class's bound method

    def generate(*args: Any, **kwargs: Any) -> Any:
        from ecc_kv.hf.cache import ECCCache

        if kwargs.get("past_key_values") is None and kwargs.get("use_cache", True) is not False:
            ids = kwargs.get("input_ids", args[0] if args else None)
            prompt = int(ids.shape[-1]) if isinstance(ids, torch.Tensor) else 0
            new = kwargs.get("max_new_tokens") or model.generation_config.max_new_tokens
            cap = prompt + int(new) if new else max(prompt + 1, model._ecc_state.config.max_cache_len)
            kwargs["past_key_values"] = ECCCache(model, max_cache_len=cap)
        return original(*args, **kwargs)

    generate.__doc__ = original.__doc__
    model.generate = generate


def _resolve_state(model: Any | None) -> ECCState | None:
    if model is not None:
        return getattr(model, "_ecc_state", None)
    return _LAST_STATE[0]() if _LAST_STATE else None


def get_ecc_stats(model: Any | None = None) -> dict[str, Any]:
    """Counts per layer and in total: bits flipped, codewords corrected / detected, values interpolated.

    ``model=None``: the most recently patched model. Fused-kernel counters are read here (one sync).
    """
    state = _resolve_state(model)
    if state is None:
        raise ValueError("no model is patched; call patch_model_with_ecc_attention(model, cfg) first")
    for layer, cnt in list(state.rt_counters.items()):
        state.stats.add(
            layer, dict(zip(("bits_flipped", "corrected", "detected", "interpolated"), cnt.tolist(), strict=True))
        )
        cnt.zero_()
    for layer, cnt in list(state.counters.items()):
        corrected, detected = (int(v) for v in cnt.tolist())
        state.stats.add(layer, {"corrected": corrected, "detected": detected})
        cnt.zero_()
    out = state.stats.as_dict()
    out["mode"] = state.config.mode_name
    out["ber"] = float(state.config.ber)
    return out


def reset_ecc_cache(model: Any | None = None) -> None:
    """Clear the counters and the per-layer call indices (the next forward draws the first fault streams again)."""
    state = _resolve_state(model)
    if state is not None:
        state.reset()
