"""Task kinds: one module per kind, each with ``run(params, ctx)``, ``summarize(raw)``,
and optionally ``validate(params)`` and ``plots(df, outdir)``.

``TASKS`` maps short names to the dotted task path a spec's ``task:`` key takes; it is an
explicit list, nothing registers itself at import time.
"""

TASKS: dict[str, str] = {
    "gemm_shapes": "ecc_kv.experiments.gemm_shapes:run",
    "sdpa_shapes": "ecc_kv.experiments.sdpa_shapes:run",
    "pad_shapes": "ecc_kv.experiments.pad_shapes:run",
    "codec_bench": "ecc_kv.experiments.codec_bench:run",
    "attention_bench": "ecc_kv.experiments.attention_bench:run",
    "ber_sweep": "ecc_kv.experiments.ber_sweep:run",
    "kv_quant": "ecc_kv.experiments.kv_quant:run",
    "kv_pack_bench": "ecc_kv.experiments.kv_pack_bench:run",
    "weight_cache_bench": "ecc_kv.experiments.weight_cache_bench:run",
    "sparse_mlp": "ecc_kv.experiments.sparse_mlp:run",
}
