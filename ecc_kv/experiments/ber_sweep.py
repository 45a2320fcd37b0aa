"""Task ``ber_sweep``: a real model's quality with its KV cache stored in a protection mode at a bit error rate.

One run = one (model, text, samples, cache_mode, ber, error_model, seed) point. The model reads
each sample in one forward pass in which every layer's K and V go through
``ecc_kv.kv_protect.roundtrip`` (quantize, encode, inject faults at ``ber``, decode, interpolate,
dequantize) before attention (``ecc_kv.hf``). Compared with the clean model (no KV quantization,
no faults; fp16 on GPU, the model's dtype on CPU) on the same samples:

- raw: per sample NLL, perplexity, KL from clean (nats/token), top-5 accuracy, catastrophic flag
  (see ``ecc_kv.metrics``); the ECC counters (bits flipped, corrected, detected, interpolated) per
  layer; the forward time of every batch, and of the clean forward.
- summary: means with 95% intervals over samples, the sufficient statistics (mean, sd, n) that
  ``plots`` pools over seeds, catastrophic rate (Wilson interval), tokens/s of this mode and of
  the clean forward measured in the same process, and the stored bits per value of the mode.

Expensive things live in ``ctx.shared`` for every run packed in the same array element: the
loaded model (key: model, gguf_file, device, dtype), the token samples (plus text, n_samples,
seq_len) and the clean reference logits (plus device and dtype); group runs by ``model``.

Fault streams: sample batch ``i`` uses seed ``mix_seed(seed, i * batch_size)``, and inside a
forward every (layer, K/V) draws its own stream, so a run is reproducible for a fixed
``batch_size`` (part of the config) on one backend.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from ecc_kv.experiments._ber_sweep_plots import plots  # noqa: F401 -- the task's plots(df, outdir)
from ecc_kv.metrics import CATASTROPHIC_MULTIPLE, catastrophic, mean_ci, sample_metrics, wilson_ci
from ecc_kv.modes import MODES, get_mode

if TYPE_CHECKING:
    from pipeline.context import RunContext

DEFAULTS: dict[str, Any] = {
    "model": "smollm2-135m",
    "gguf_file": None,
    "text": "pydoc",
    "n_samples": 4,
    "seq_len": 128,
    "batch_size": 1,
    "cache_mode": "int4-hamming84",
    "ber": 0.0,
    "error_model": "bsc",
    "burst_len": 2,
    "seed": 0,
    "backend": "auto",
    "device": "auto",
    "dtype": "auto",
    "sink_blocks": 1,
    "block_size": 16,
    "group_size": None,
    "warmup": 1,
    "speed_repeats": 0,
    "threads": 0,
    "catastrophic_multiple": CATASTROPHIC_MULTIPLE,
}
CHOICES = {
    "cache_mode": tuple(MODES),
    "error_model": ("bsc", "burst"),
    "backend": ("auto", "torch", "triton"),
    "device": ("auto", "cpu", "cuda"),
    "dtype": ("auto", "float16", "bfloat16", "float32"),
}
METRICS = ("nll", "ppl", "kl", "top5")
COUNTERS = ("bits_flipped", "corrected", "detected", "interpolated", "values")


def _int(p: dict[str, Any], key: str, lo: int) -> None:
    val = p[key]
    if isinstance(val, bool) or not isinstance(val, int) or val < lo:
        raise ValueError(f"ber_sweep: {key}={val!r} must be an int >= {lo}")


def validate(params: dict[str, Any]) -> None:
    """Reject bad parameters before anything runs (ValueError naming the key and the choices)."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"ber_sweep: unknown parameter(s) {unknown}; valid: {', '.join(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    for key, choices in CHOICES.items():
        if p[key] not in choices:
            raise ValueError(f"ber_sweep: {key}={p[key]!r}; choose one of: {', '.join(choices)}")
    for key in ("model", "text"):
        if not isinstance(p[key], str) or not p[key]:
            raise ValueError(f"ber_sweep: {key}={p[key]!r} must be a non-empty string")
    if p["gguf_file"] is not None and not isinstance(p["gguf_file"], str):
        raise ValueError(f"ber_sweep: gguf_file={p['gguf_file']!r} must be a file name or null")
    ber = p["ber"]
    if isinstance(ber, bool) or not isinstance(ber, (int, float)) or not 0.0 <= float(ber) <= 1.0:
        raise ValueError(f"ber_sweep: ber={ber!r} must be a number in [0, 1]")
    _int(p, "n_samples", 1)
    _int(p, "seq_len", 2)
    _int(p, "batch_size", 1)
    _int(p, "burst_len", 1)
    _int(p, "seed", 0)
    _int(p, "sink_blocks", 0)
    _int(p, "block_size", 1)
    _int(p, "warmup", 0)
    _int(p, "speed_repeats", 0)
    _int(p, "threads", 0)
    if p["group_size"] is not None:
        _int(p, "group_size", 1)
    mult = p["catastrophic_multiple"]
    if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not mult > 1:
        raise ValueError(f"ber_sweep: catastrophic_multiple={mult!r} must be a number > 1")
    if p["cache_mode"] == "adaptive" and p["sink_blocks"] < 1:
        raise ValueError("ber_sweep: cache_mode='adaptive' needs sink_blocks >= 1")


# --------------------------------------------------------------------------------- shared setup


def _device(p: dict[str, Any], ctx: RunContext) -> str:
    if p["device"] == "auto":
        return ctx.device
    if p["device"] == "cuda" and not torch.cuda.is_available():
        raise ValueError("ber_sweep: device='cuda' but no CUDA GPU is visible")
    return p["device"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _warmups(p: dict[str, Any], device: str) -> int:
    """Untimed forwards before timing: on GPU only (nothing compiles on the CPU torch path)."""
    return int(p["warmup"]) if device.startswith("cuda") else 0


def _model(ctx: RunContext, p: dict[str, Any], device: str) -> tuple[Any, Any]:
    from ecc_kv.models import load_model, load_tokenizer

    key = ("ber_sweep.model", p["model"], p["gguf_file"], device, p["dtype"])
    if key not in ctx.shared:
        ctx.log.info("loading model %s on %s", p["model"], device)
        dtype = None if p["dtype"] == "auto" else p["dtype"]
        model = load_model(p["model"], gguf_file=p["gguf_file"], device=device, dtype=dtype)
        ctx.shared[key] = (model, load_tokenizer(p["model"], gguf_file=p["gguf_file"]))
    return ctx.shared[key]


def _samples(ctx: RunContext, p: dict[str, Any], tok: Any) -> torch.Tensor:
    from ecc_kv.text import load_samples

    key = ("ber_sweep.samples", p["model"], p["gguf_file"], p["text"], p["n_samples"], p["seq_len"])
    if key not in ctx.shared:
        ctx.shared[key] = load_samples(tok, p["text"], p["n_samples"], p["seq_len"])  # [N, L] int64, CPU
    return ctx.shared[key]


def _batches(n: int, bs: int) -> list[slice]:
    return [slice(i, min(i + bs, n)) for i in range(0, n, bs)]


def _forward(model: Any, ids: torch.Tensor, device: str) -> tuple[torch.Tensor, float]:
    """Logits ``[b, L, V]`` of one batch and its wall time in ms (synchronized)."""
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        logits = model(ids.to(device), use_cache=False).logits
    _sync(device)
    return logits, (time.perf_counter() - t0) * 1e3


def _paired_speed(model: Any, ids: torch.Tensor, device: str, repeats: int) -> tuple[list[float], list[float]]:
    """(plain ms, mode ms) of ``repeats`` interleaved forwards of one batch, timed with ``ecc_kv.timing``.

    The patched model's attention implementation is switched back to the plain one for the plain
    forwards, so both are taken in the same run, alternating, and clock drift hits both alike.
    """
    from ecc_kv.hf.attention import ATTN_NAME
    from ecc_kv.timing import time_fn

    plain_attn = model._ecc_state.prev_attn or "sdpa"
    ids = ids.to(device)

    def fwd() -> None:
        with torch.no_grad():
            model(ids, use_cache=False)

    plain, mode = [], []
    try:
        for _ in range(repeats):
            model.set_attn_implementation(plain_attn)
            plain += time_fn(fwd, device=device, warmup=1, repeats=1)
            model.set_attn_implementation(ATTN_NAME)
            mode += time_fn(fwd, device=device, warmup=1, repeats=1)
    finally:
        model.set_attn_implementation(ATTN_NAME)
    return plain, mode


def _clean(ctx: RunContext, p: dict[str, Any], model: Any, samples: torch.Tensor, device: str) -> dict[str, Any]:
    """Clean logits (CPU, model dtype), per-sample clean metrics and forward times; once per element."""
    key = ("ber_sweep.clean", p["model"], p["gguf_file"], p["text"], p["n_samples"], p["seq_len"], device,
           p["dtype"], p["batch_size"])  # fmt: skip
    if key in ctx.shared:
        return ctx.shared[key]
    ctx.log.info("clean reference: %d samples x %d tokens", *samples.shape)
    for _ in range(_warmups(p, device)):
        _forward(model, samples[: p["batch_size"]], device)
    logits, times, metrics = [], [], {m: [] for m in METRICS if m != "kl"}
    for sl in _batches(samples.shape[0], p["batch_size"]):
        out, ms = _forward(model, samples[sl], device)
        times.append(ms)
        for m, vals in sample_metrics(out, samples[sl]).items():
            metrics[m] += vals
        logits.append(out.cpu())
    ctx.shared[key] = {"logits": logits, "forward_ms": times, **metrics}
    return ctx.shared[key]


# --------------------------------------------------------------------------------- the task


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def run(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Evaluate one (mode, ber, error model, seed) point against the shared clean reference."""
    from ecc_kv.hf import ECCShimConfig, get_ecc_stats, patch_model_with_ecc_attention, reset_ecc_cache
    from ecc_kv.hf.attention import unpatch_model
    from ecc_kv.hf.config import mix_seed
    from ecc_kv.kv_protect import stored_bits_per_value

    validate(params)
    p = {**DEFAULTS, **params}
    device = _device(p, ctx)
    if p["threads"] > 0:  # on a shared CPU, 2 OpenMP threads can be 10x slower than 1 for small matmuls
        torch.set_num_threads(p["threads"])
    model, tok = _model(ctx, p, device)
    samples = _samples(ctx, p, tok)
    clean = _clean(ctx, p, model, samples, device)
    cfg = ECCShimConfig.from_mode(
        p["cache_mode"], ber=float(p["ber"]), seed=int(p["seed"]), error_model=p["error_model"],
        burst_len=int(p["burst_len"]), backend=p["backend"], sink_blocks=int(p["sink_blocks"]),
        block_size=int(p["block_size"]), group_size=p["group_size"],
    )  # fmt: skip
    state = patch_model_with_ecc_attention(model, cfg)
    per_sample: dict[str, list] = {m: [] for m in (*METRICS, "clean_ppl", "catastrophic")}
    times: list[float] = []
    try:
        for _ in range(_warmups(p, device)):  # untimed; the first call compiles Triton kernels
            _forward(model, samples[: p["batch_size"]], device)
        speed_plain, speed_mode = _paired_speed(model, samples[: p["batch_size"]], device, p["speed_repeats"])
        reset_ecc_cache(model)
        batches = _batches(samples.shape[0], p["batch_size"])
        for bi, sl in enumerate(batches):
            state.config = replace(cfg, seed=mix_seed(cfg.seed, sl.start))
            state.calls.clear()
            logits, ms = _forward(model, samples[sl], device)
            times.append(ms)
            clean_logits = clean["logits"][bi].to(logits.device)
            met = sample_metrics(logits, samples[sl], clean_logits)
            clean_ppl = torch.tensor(clean["ppl"][sl])
            cat = catastrophic(torch.tensor(met["ppl"]), clean_ppl, float(p["catastrophic_multiple"]))
            for m in METRICS:
                per_sample[m] += [float(v) for v in met[m]]
            per_sample["clean_ppl"] += clean_ppl.tolist()
            per_sample["catastrophic"] += [bool(c) for c in cat.tolist()]
            ctx.progress(bi + 1, len(batches), f"{p['cache_mode']} ber={p['ber']}")
        stats = get_ecc_stats(model)
    finally:
        unpatch_model(model)
    text_cfg = model.config.get_text_config(decoder=True)
    head_dim = int(getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads)
    n_tok = int(samples.numel())
    return {
        "samples": {k: [_finite(v) if isinstance(v, float) else v for v in vals] for k, vals in per_sample.items()},
        "clean": {m: [_finite(v) for v in clean[m]] for m in ("nll", "ppl", "top5")},
        "ecc": {"total": stats["total"], "per_layer": {str(k): v for k, v in stats["per_layer"].items()}},
        "forward_ms": times,
        "clean_forward_ms": list(clean["forward_ms"]),
        "speed_plain_ms": speed_plain,
        "speed_mode_ms": speed_mode,
        "speed_tokens": int(samples[: p["batch_size"]].numel()),
        "tokens": n_tok,
        "device": device,
        "model_dtype": str(model.dtype).removeprefix("torch."),
        "head_dim": head_dim,
        "bits_per_value": stored_bits_per_value(p["cache_mode"], head_dim),
        "nominal_bits_per_value": get_mode(p["cache_mode"]).bits_per_value,
        "catastrophic_multiple": float(p["catastrophic_multiple"]),
    }


def _vals(raw_list: list[Any]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in raw_list]


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Means with 95% CIs over samples, pooling statistics, catastrophic rate, tokens/s, counters."""
    s = raw["samples"]
    out: dict[str, Any] = {}
    n = len(s["nll"])
    nll = _vals(s["nll"])
    finite = [x for x in nll if math.isfinite(x)]
    out["samples_scored"] = n
    out["nonfinite_samples"] = n - len(finite)
    for m in ("nll", "kl", "top5"):
        xs = _vals(s[m])
        mean, lo, hi = mean_ci(xs)
        out[f"{m}_mean"], out[f"{m}_lo"], out[f"{m}_hi"] = mean, lo, hi
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 and math.isfinite(mean) else 0.0
        out[f"{m}_sd"] = sd
    # Perplexity of the whole evaluated text: exp(mean NLL); its interval maps the NLL interval.
    for suffix in ("mean", "lo", "hi"):
        v = out[f"nll_{suffix}"]
        out[{"mean": "ppl", "lo": "ppl_lo", "hi": "ppl_hi"}[suffix]] = math.exp(v) if math.isfinite(v) else float("inf")
    out["ppl_finite"] = math.exp(sum(finite) / len(finite)) if finite else float("nan")
    clean_nll = _vals(raw["clean"]["nll"])
    out["clean_ppl"] = math.exp(sum(clean_nll) / len(clean_nll))
    out["ppl_ratio"] = out["ppl"] / out["clean_ppl"]
    cat = sum(bool(c) for c in s["catastrophic"])
    out["catastrophic_rate"], out["catastrophic_lo"], out["catastrophic_hi"] = wilson_ci(cat, n)
    out["catastrophic_count"] = cat
    for key in COUNTERS:
        out[key] = int(raw["ecc"]["total"].get(key, 0))
    values = max(out["values"], 1)
    out["flips_per_value"] = out["bits_flipped"] / values
    out["corrected_per_value"] = out["corrected"] / values
    out["detected_per_value"] = out["detected"] / values
    total_s = sum(raw["forward_ms"]) / 1e3
    clean_s = sum(raw["clean_forward_ms"]) / 1e3
    out["tokens_per_s"] = raw["tokens"] / total_s if total_s > 0 else float("nan")
    out["clean_tokens_per_s"] = raw["tokens"] / clean_s if clean_s > 0 else float("nan")
    out["time_ratio_vs_clean"] = total_s / clean_s if clean_s > 0 else float("nan")
    if raw.get("speed_mode_ms"):  # paired, interleaved timing of one batch (speed_repeats > 0): the speed figure
        plain_ms, mode_ms = statistics.median(raw["speed_plain_ms"]), statistics.median(raw["speed_mode_ms"])
        out["tokens_per_s"] = raw["speed_tokens"] / mode_ms * 1e3
        out["clean_tokens_per_s"] = raw["speed_tokens"] / plain_ms * 1e3
        out["time_ratio_vs_clean"] = mode_ms / plain_ms
    out["bits_per_value"] = float(raw["bits_per_value"])
    out["device_used"] = raw["device"]
    return out
