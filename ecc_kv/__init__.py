"""ecc_kv: INT4 KV caches protected by error-correcting codes, and the studies around them.

The transformers drop-in (``ECCShimConfig``, ``patch_model_with_ecc_attention``,
``get_ecc_stats``, ``reset_ecc_cache``) is imported lazily so that ``import ecc_kv``
stays cheap and does not need transformers.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "ECCShimConfig": "ecc_kv.hf",
    "patch_model_with_ecc_attention": "ecc_kv.hf",
    "get_ecc_stats": "ecc_kv.hf",
    "reset_ecc_cache": "ecc_kv.hf",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ecc_kv' has no attribute {name!r}")
