"""The transformers drop-in: protected (INT4 + ECC + faults) KV caches for any HF causal LM.

    from ecc_kv import ECCShimConfig, patch_model_with_ecc_attention, get_ecc_stats, reset_ecc_cache
    cfg = ECCShimConfig(codec="hamming84", use_interpolation=True, ber=1e-3, backend="triton")
    patch_model_with_ecc_attention(model, cfg)
    out = model.generate(**inputs, max_new_tokens=50)
    get_ecc_stats()  # corrected / detected / injected bit flips, per layer and total

See docs/transformers.md for what happens on each path.
"""

from ecc_kv.hf.attention import (
    ATTN_NAME,
    ECCState,
    ecc_attention_forward,
    get_ecc_stats,
    patch_model_with_ecc_attention,
    register,
    reset_ecc_cache,
    unpatch_model,
)
from ecc_kv.hf.cache import ECCCache, ECCLayer
from ecc_kv.hf.config import ECCShimConfig, ECCStats

__all__ = [
    "ATTN_NAME",
    "ECCCache",
    "ECCLayer",
    "ECCShimConfig",
    "ECCState",
    "ECCStats",
    "ecc_attention_forward",
    "get_ecc_stats",
    "patch_model_with_ecc_attention",
    "register",
    "reset_ecc_cache",
    "unpatch_model",
]
