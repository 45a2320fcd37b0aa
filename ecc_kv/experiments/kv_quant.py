"""Task kind ``kv_quant``: the compression-quality frontier of quantized KV caches (QAQ study).

One run = one cache mode (``fp16``, ``int1`` .. ``int8`` with optional outliers, ``kivi2`` /
``kivi4``, ``qaq`` at given error targets and window), optionally with bit errors in the
packed bytes (``ber``, ``error_model``) and an ECC over them (``codec``). For each run:

- perplexity, KL from the clean model and top-5 on real text (``ecc_kv.text`` samples,
  ``ecc_kv.metrics``), with every layer's K/V through the mode's real packed cache in a
  full forward pass (``ecc_kv.kv_quant_modes``); the clean logits are computed once per
  array element (``ctx.shared``) and shared by the runs packed with it;
- storage: average bits (ideal) and real bits per value including every byte of metadata,
  for K and V separately, the matching compression ratios and bytes per token (all layers,
  all KV heads); key/value MSE and the attention-probability error (total variation of the
  last ``attn_rows`` query rows);
- optionally multiple-choice accuracy as QAQ measures it (``mc``): the question's cache is
  quantized, each choice is scored by its mean token log-probability given that cache.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ecc_kv.kv_quant_modes import FIXED_MODES, KVQuantConfig, KVStats, qaq_from_params, quantized_kv
from ecc_kv.mc_eval import load_mc_items, score_mc

if TYPE_CHECKING:
    from pipeline.context import RunContext

DEFAULTS: dict[str, Any] = {
    "model": "smollm2-135m",
    "text": "pydoc",
    "n_samples": 4,
    "seq_len": 256,
    "batch_size": 4,
    "mode": "int4",
    "group_size": None,
    "scheme": "minmax",
    "outliers": 0.0,
    "kivi_group": 32,
    "kivi_residual": 32,
    "qaq_error_k": 0.01,
    "qaq_error_v": 0.01,
    "qaq_window": 5,
    "qaq_bits_min": 1,
    "qaq_bits_max": 8,
    "qaq_q_quantile": 0.9,
    "qaq_variant": "paper",
    "codec": "none",
    "ber": 0.0,
    "error_model": "bsc",
    "burst_len": 2,
    "seed": 0,
    "backend": "torch",
    "attn_rows": 16,
    "mc": "none",
    "mc_items": 0,
    "dtype": None,
    "threads": 0,
}


def _params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"kv_quant: unknown parameter(s) {unknown}; valid: {', '.join(DEFAULTS)}")
    return {**DEFAULTS, **params}


def build_config(params: dict[str, Any]) -> KVQuantConfig:
    """The cache configuration of a run (ValueError names the bad key)."""
    p = _params(params)
    if p["mode"] not in FIXED_MODES:
        raise ValueError(f"kv_quant: mode={p['mode']!r} is not one of {', '.join(FIXED_MODES)}")
    codec = None if p["codec"] in (None, "none") else p["codec"]
    gs = p["group_size"]
    if gs is not None and (isinstance(gs, bool) or not isinstance(gs, int) or gs < 1):
        raise ValueError(f"kv_quant: group_size={gs!r} must be a positive int or null")
    try:
        return KVQuantConfig(
            mode=p["mode"], group_size=gs, scheme=p["scheme"], outliers=float(p["outliers"]),
            kivi_group=int(p["kivi_group"]), kivi_residual=int(p["kivi_residual"]), qaq=qaq_from_params(p),
            codec=codec, ber=float(p["ber"]), error_model=p["error_model"], burst_len=int(p["burst_len"]),
            seed=int(p["seed"]), backend=p["backend"], attn_rows=int(p["attn_rows"]),
        )
    except ValueError as exc:
        raise ValueError(f"kv_quant: {exc}") from None


def validate(params: dict[str, Any]) -> None:
    """Check a run's parameters before anything is submitted."""
    p = _params(params)
    build_config(p)
    if isinstance(p["threads"], bool) or not isinstance(p["threads"], int) or p["threads"] < 0:
        raise ValueError(f"kv_quant: threads={p['threads']!r} must be an int >= 0 (0: leave torch's default)")
    for key in ("n_samples", "seq_len", "batch_size"):
        if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 1:
            raise ValueError(f"kv_quant: {key}={p[key]!r} must be a positive int")
    if p["backend"] not in ("torch", "triton"):
        raise ValueError(f"kv_quant: backend={p['backend']!r} is not one of ('torch', 'triton')")


def _model(ctx: RunContext, p: dict[str, Any]) -> tuple[Any, Any]:
    from ecc_kv.models import load_model, load_tokenizer

    key = ("kv_quant.model", p["model"], ctx.device, p["dtype"])
    if key not in ctx.shared:
        t0 = time.perf_counter()
        ctx.shared[key] = (load_model(p["model"], device=ctx.device, dtype=p["dtype"]), load_tokenizer(p["model"]))
        ctx.log.info("loaded %s in %.1f s", p["model"], time.perf_counter() - t0)
    return ctx.shared[key]


def _clean(ctx: RunContext, p: dict[str, Any], model: Any, tok: Any) -> tuple[torch.Tensor, torch.Tensor]:
    from ecc_kv.text import load_samples

    key = ("kv_quant.clean", p["model"], ctx.device, p["dtype"], p["text"], p["n_samples"], p["seq_len"])
    if key not in ctx.shared:
        ids = load_samples(tok, p["text"], p["n_samples"], p["seq_len"])
        ctx.shared[key] = (ids, _logits(model, ids, p["batch_size"]))
    return ctx.shared[key]


@torch.no_grad()
def _logits(model: Any, ids: torch.Tensor, batch: int) -> torch.Tensor:
    dev = next(model.parameters()).device
    outs = [model(ids[i:i + batch].to(dev), use_cache=False).logits.float().cpu() for i in range(0, len(ids), batch)]
    return torch.cat(outs)  # [N, L, V]


def _n_layers_heads(model: Any) -> tuple[int, int, int]:
    cfg = model.config
    n_layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    return int(n_layers), int(n_kv), int(d)


def run(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Evaluate one cache mode: quality on text (+ multiple choice) and real storage."""
    from ecc_kv.metrics import sample_metrics

    p = _params(params)
    cfg = build_config(p)
    if p["backend"] == "triton" and ctx.device != "cuda":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before kernels/ is imported
    if p["threads"]:
        # on a shared 2-core laptop, OpenMP spin-waiting makes 2 threads ~20x slower than 1
        torch.set_num_threads(int(p["threads"]))
    model, tok = _model(ctx, p)
    ids, clean = _clean(ctx, p, model, tok)
    stats = KVStats()
    t0 = time.perf_counter()
    with torch.no_grad(), quantized_kv(model, cfg, stats):
        logits = _logits(model, ids, p["batch_size"])
    seconds = time.perf_counter() - t0
    per_sample = sample_metrics(logits, ids, clean)
    n_layers, n_kv, d = _n_layers_heads(model)
    raw: dict[str, Any] = {
        "per_sample": per_sample,
        "clean": sample_metrics(clean, ids),
        "storage": stats.finish(),
        "model_shape": {"n_layers": n_layers, "n_kv_heads": n_kv, "head_dim": d},
        "eval_seconds": seconds,
        "tokens": int(ids.numel()),
    }
    if p["mc"] not in (None, "none"):
        items = load_mc_items(p["mc"], limit=p["mc_items"])
        raw["mc"] = score_mc(model, tok, items, cfg)
    ctx.progress(1, 1, f"{cfg.mode}: ppl {sum(per_sample['ppl']) / len(per_sample['ppl']):.3f}")
    return raw


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Means with 95% intervals over samples, storage numbers, MC accuracy."""
    from ecc_kv.metrics import mean_ci, wilson_ci

    out: dict[str, Any] = {}
    for key in ("ppl", "kl", "top5", "nll"):
        vals = raw["per_sample"][key]
        m, lo, hi = mean_ci(vals)
        out[key], out[f"{key}_lo"], out[f"{key}_hi"] = _finite(m), _finite(lo), _finite(hi)
    out["ppl_clean"] = _finite(mean_ci(raw["clean"]["ppl"])[0])
    st = raw["storage"]
    out.update({k: _finite(v) for k, v in st.items()})
    shp = raw["model_shape"]
    values_per_token = shp["n_layers"] * shp["n_kv_heads"] * shp["head_dim"]  # per K (and per V)
    for name in ("k", "v"):
        out[f"bytes_per_token_real_{name}"] = st[f"bits_real_{name}"] / 8 * values_per_token
        out[f"bytes_per_token_ideal_{name}"] = st[f"avg_bits_{name}"] / 8 * values_per_token
    out["bytes_per_token_real"] = out["bytes_per_token_real_k"] + out["bytes_per_token_real_v"]
    out["bytes_per_token_ideal"] = out["bytes_per_token_ideal_k"] + out["bytes_per_token_ideal_v"]
    out["bytes_per_token_fp16"] = 4.0 * values_per_token
    out["tokens_per_s"] = raw["tokens"] / max(raw["eval_seconds"], 1e-9)
    if "mc" in raw:
        n, correct = raw["mc"]["n"], raw["mc"]["correct"]
        acc, lo, hi = wilson_ci(correct, n) if n else (math.nan, math.nan, math.nan)
        out["mc_acc"], out["mc_acc_lo"], out["mc_acc_hi"] = _finite(acc), _finite(lo), _finite(hi)
        out["mc_n"] = n
    return out


def _finite(x: float) -> float | str:
    x = float(x)
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")


# ----------------------------------------------------------------------------- plots


def _family(row: Any) -> str:
    mode = str(row.get("mode", ""))
    if mode.startswith("int"):
        return "uniform+outliers" if float(row.get("outliers", 0) or 0) > 0 else "uniform"
    return "qaq" if mode == "qaq" else "kivi" if mode.startswith("kivi") else mode


def pareto_mask(x: list[float], y: list[float]) -> list[bool]:
    """True for points not dominated (higher x = more compression is better, lower y is better)."""
    out = []
    for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
        dominated = any((xj >= xi and yj <= yi) and (xj > xi or yj < yi) for j, (xj, yj) in enumerate(zip(x, y, strict=True)) if j != i)
        out.append(not dominated)
    return out


def plots(df: Any, outdir: Path) -> list[Path]:
    """PPL and KL vs real compression ratio (Pareto frontier marked); PPL vs BER for the packed QAQ cache."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    outdir = Path(outdir)
    paths: list[Path] = []
    d = df.copy()
    for col in ("ppl", "kl", "ratio_real", "ber"):
        if col in d:
            d[col] = pd.to_numeric(d[col], errors="coerce")
    if "ber" not in d:
        d["ber"] = 0.0
    clean = d[(d["ber"].fillna(0) == 0)]
    if "codec" in clean:
        clean = clean[clean["codec"].fillna("none").isin(["none"])]
    clean = clean.dropna(subset=["ratio_real", "ppl"])
    if len(clean):
        fam = clean.apply(_family, axis=1)
        for metric, label in (("ppl", "perplexity"), ("kl", "KL from fp16 (nats/token)")):
            if metric not in clean:
                continue
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for f in sorted(set(fam)):
                sub = clean[fam == f]
                ax.scatter(sub["ratio_real"], sub[metric], label=f, s=28)
            x, y = clean["ratio_real"].tolist(), clean[metric].tolist()
            mask = pareto_mask(x, y)
            front = sorted((xi, yi) for xi, yi, m in zip(x, y, mask, strict=True) if m)
            ax.plot([a for a, _ in front], [b for _, b in front], "k--", lw=1, label="Pareto frontier")
            ax.set_xlabel("real compression ratio vs fp16 (metadata included)")
            ax.set_ylabel(label)
            ax.set_yscale("log")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
            path = outdir / f"kv_quant_{metric}_vs_ratio.png"
            fig.tight_layout()
            fig.savefig(path, dpi=120)
            plt.close(fig)
            paths.append(path)
    faulty = d[(d["mode"] == "qaq")] if "mode" in d else d.iloc[0:0]
    if len(faulty) and faulty["ber"].nunique() > 1:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        codec_col = faulty["codec"].fillna("none") if "codec" in faulty else pd.Series(["none"] * len(faulty))
        for codec in sorted(set(codec_col)):
            sub = faulty[codec_col == codec].groupby("ber")["ppl"].mean().reset_index()
            xs = sub["ber"].where(sub["ber"] > 0, 1e-6)
            ax.plot(xs, sub["ppl"], "o-", label=f"qaq packed, codec={codec}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("bit error rate (0 drawn at 1e-6)")
        ax.set_ylabel("perplexity")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        path = outdir / "kv_quant_ppl_vs_ber.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
