"""Task kind ``attention_bench``: decode-attention latency over the paged ECC INT4 cache vs fp16.

One run is one (head shape, batch, context, mode) point. The run fills a paged cache of
``batch`` sequences of ``context`` tokens (one layer, random K/V, shuffled block tables),
optionally injects bit errors into the stored bytes, and times one decode step (one query
token per sequence) of the fused kernel (``kernels.paged_attention``). In the same run
(shared by the runs of one array element through ``ctx.shared``) it times the fp16
baseline on the same K/V: PyTorch SDPA with the FlashAttention backend (GQA as ``G``
query rows per KV head) and FlashAttention's own ``flash_attn_with_kvcache`` when it is
importable (the faster one is the baseline), and a device-to-device copy for the
bandwidth bound. Timing: ``ecc_kv.timing`` with L2 flushed before every call; on CUDA each
step (ours and the baseline) is captured in a CUDA graph and the replays are timed, because a
decode step's GPU time (microseconds) is below its eager host launch cost.

Bytes of cache read: codeword rows + fp16 scales of K and V for every token (fp16: the
K/V values); achieved GB/s = bytes / median time; ``ratio_to_copy`` = achieved / copy GB/s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ecc_kv.cache import SUPPORTED_MODES, ECCCacheConfig, PagedECCCache
from ecc_kv.timing import copy_bandwidth_gbps, time_fn, time_stats

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.context import RunContext

KIND = "attention_bench"
SHAPES: dict[str, tuple[int, int, int]] = {  # name: (query heads, KV heads, head_dim)
    "llama-3.1-8b": (32, 8, 128),
    "gpt2": (12, 12, 64),
    "tiny": (4, 2, 32),  # CPU smoke tests (Triton interpreter)
}
MODES = ("fp16", *SUPPORTED_MODES)
DEFAULTS: dict[str, Any] = {
    "shape": "llama-3.1-8b",
    "batch": 1,
    "context": 8192,
    "mode": "int4-hamming84",
    "block_size": 16,
    "sink_blocks": 1,  # adaptive mode only
    "ber": 0.0,  # bit errors injected into the stored cache before timing
    "seed": 0,
    "num_splits": 0,  # 0: the kernel's default (fill the GPU)
    "block_n": 64,
    "num_warps": 4,
    "warmup": 5,
    "repeats": 30,
    "flush_l2": True,
    "cuda_graph": True,  # time CUDA-graph replays (as a serving loop launches decode steps)
    "device": "auto",  # auto: the run context's device; cpu | cuda to force one
}


def validate(params: dict[str, Any]) -> None:
    """Reject unknown shapes/modes and non-positive sizes before anything is submitted."""
    p = {**DEFAULTS, **params}
    if p["shape"] not in SHAPES:
        raise ValueError(f"shape={p['shape']!r} is not one of {list(SHAPES)}")
    if p["mode"] not in MODES:
        raise ValueError(f"mode={p['mode']!r} is not one of {list(MODES)}")
    for key in ("batch", "context", "block_size", "block_n", "num_warps", "repeats"):
        if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 1:
            raise ValueError(f"{key}={p[key]!r} must be a positive int")
    for key in ("warmup", "num_splits", "sink_blocks", "seed"):
        if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 0:
            raise ValueError(f"{key}={p[key]!r} must be an int >= 0")
    if not isinstance(p["ber"], (int, float)) or not 0.0 <= float(p["ber"]) < 0.5:
        raise ValueError(f"ber={p['ber']!r} must be a number in [0, 0.5)")
    if p["num_warps"] not in (1, 2, 4, 8, 16):
        raise ValueError(f"num_warps={p['num_warps']!r} must be one of 1, 2, 4, 8, 16")
    for key in ("flush_l2", "cuda_graph"):
        if not isinstance(p[key], bool):
            raise ValueError(f"{key}={p[key]!r} must be true or false")
    if p["device"] not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={p['device']!r} is not one of ['auto', 'cpu', 'cuda']")
    if p["block_n"] & (p["block_n"] - 1) or p["block_n"] < 16:
        raise ValueError(f"block_n={p['block_n']} must be a power of two >= 16")


def _interpret_on_cpu() -> None:
    """Without a GPU the Triton kernels run interpreted; the flag must be set before they are imported."""
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def _fp16_kv(p: dict[str, Any], device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q [B, HQ, D] and K/V [B, HKV, T, D] fp16 (seeded: every mode of a point sees the same data)."""
    hq, hkv, d = SHAPES[p["shape"]]
    gen = torch.Generator(device=device).manual_seed(p["seed"])
    b, t = p["batch"], p["context"]
    q = torch.randn(b, hq, d, generator=gen, device=device, dtype=torch.float16)
    k = torch.randn(b, hkv, t, d, generator=gen, device=device, dtype=torch.float16)
    v = torch.randn(b, hkv, t, d, generator=gen, device=device, dtype=torch.float16)
    return q, k, v


def _fp16_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """fp16 decode attention; GQA as G query rows per KV head (one SDPA call, no K/V repeat)."""
    b, hq, d = q.shape
    hkv = k.shape[1]
    qg = q.reshape(b, hkv, hq // hkv, d)  # [B, HKV, G, D]
    return F.scaled_dot_product_attention(qg, k, v, scale=scale).reshape(b, hq, d)


def _graphed(fn: Callable[[], Any], dev: str, use: bool, ctx: RunContext) -> tuple[Callable[[], Any], bool]:
    """``fn`` captured in a CUDA graph (replay = one launch, no Python or launcher overhead).

    A decode step reads a few MB: eager, the host-side launch cost (Python, Triton's launcher)
    can exceed the GPU time and the events would time the CPU. Eager on CPU, when disabled, or
    when capture fails (logged, and ``cuda_graph`` is false in the summary).
    """
    if dev != "cuda" or not use:
        return fn, False
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # compile, allocate and cache everything outside the capture
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        torch.cuda.synchronize()
        return graph.replay, True
    except Exception as exc:  # noqa: BLE001  # fall back to eager timing, recorded in raw
        ctx.log.warning("CUDA graph capture failed (%s: %s); timing eager calls", type(exc).__name__, exc)
        torch.cuda.synchronize()
        return fn, False


def _time_fp16(p: dict[str, Any], ctx: RunContext, dev: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict[str, Any]:
    """Median of the fastest fp16 baseline available, and which one it was."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    cands: dict[str, Any] = {}
    if dev == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def sdpa_flash() -> torch.Tensor:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return _fp16_attention(q, k, v, scale)

        cands["sdpa-flash"] = sdpa_flash
        try:
            from flash_attn import flash_attn_with_kvcache  # type: ignore[import-not-found]

            kc, vc, q4 = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous(), q[:, None]
            cands["flash-attn"] = lambda: flash_attn_with_kvcache(q4, kc, vc, softmax_scale=scale)
        except ImportError:
            pass
    else:
        cands["sdpa"] = lambda: _fp16_attention(q, k, v, scale)
    best: dict[str, Any] = {}
    for name, fn in cands.items():
        try:
            call, graphed = _graphed(fn, dev, p["cuda_graph"], ctx)
            times = time_fn(call, device=dev, warmup=p["warmup"], repeats=p["repeats"], flush_l2=p["flush_l2"])
        except RuntimeError as exc:  # a backend that refuses the shape is data, not a crash
            ctx.log.warning("fp16 baseline %s failed: %s", name, exc)
            continue
        st = time_stats(times)
        if not best or st["median_ms"] < best["stats"]["median_ms"]:
            best = {"kernel": name, "times": times, "stats": st, "graph": graphed}
    if not best:
        raise RuntimeError("no fp16 attention baseline ran on this device")
    return best


def _build_cache(p: dict[str, Any], device: str, k: torch.Tensor, v: torch.Tensor) -> PagedECCCache:
    """A one-layer paged cache holding ``k, v [B, HKV, T, D]`` in ``p['mode']``, shuffled block tables."""
    hq, hkv, d = SHAPES[p["shape"]]
    b, t, bs = p["batch"], p["context"], p["block_size"]
    sink = p["sink_blocks"] if p["mode"] == "adaptive" else 0
    nblocks = b * (-(-t // bs))
    cfg = ECCCacheConfig(
        num_layers=1, num_kv_heads=hkv, head_dim=d, num_blocks=nblocks, block_size=bs, mode=p["mode"], sink_blocks=sink
    )
    cache = PagedECCCache(cfg, max_seqs=b, device=device, block_order_seed=p["seed"])
    slots = cache.allocate(t)
    flat = lambda x: x.transpose(1, 2).reshape(b * t, hkv, d)  # noqa: E731  # [B*T, HKV, D]
    cache.write(0, flat(k), flat(v), slots, backend="triton")
    if p["ber"] > 0:
        cache.inject_faults(float(p["ber"]), seed=p["seed"] + 1)
    return cache


def _cache_bytes(p: dict[str, Any]) -> int:
    """Bytes of K/V a decode step must read (codewords + scales, or fp16 values)."""
    hq, hkv, d = SHAPES[p["shape"]]
    b, t = p["batch"], p["context"]
    if p["mode"] == "fp16":
        return 2 * b * hkv * t * d * 2
    sink = p["sink_blocks"] if p["mode"] == "adaptive" else 0
    cfg = ECCCacheConfig(1, hkv, d, num_blocks=1, block_size=p["block_size"], mode=p["mode"], sink_blocks=sink)
    return int(round(cfg.bytes_per_token(t) * b * t))


def run(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Time one decode-attention step of ``mode`` and, in the same process, the fp16 baseline and a copy."""
    p = {**DEFAULTS, **params}
    validate(p)
    dev = ctx.device if p["device"] == "auto" else p["device"]
    if dev == "cpu":
        _interpret_on_cpu()
    key = ("attention_bench", p["shape"], p["batch"], p["context"], p["seed"], p["repeats"], p["flush_l2"], p["cuda_graph"])
    q, k, v = _fp16_kv(p, dev)
    base = ctx.shared.get(key)
    if base is None:
        ctx.log.info("fp16 baseline and copy bandwidth for %s", key)
        fp16 = _time_fp16(p, ctx, dev, q, k, v)
        nbytes_fp16 = 2 * k.numel() * 2
        copy = copy_bandwidth_gbps(max(nbytes_fp16, 256 * 2**20), device=dev) if dev == "cuda" else float("nan")
        base = {"fp16": fp16, "copy_gbps": copy}
        ctx.shared[key] = base
    scale = 1.0 / math.sqrt(q.shape[-1])
    ref = _fp16_attention(q.float(), k.float(), v.float(), scale).to(q.dtype)
    raw: dict[str, Any] = {
        "params": p,
        "fp16_kernel": base["fp16"]["kernel"],
        "fp16_times_ms": base["fp16"]["times"],
        "fp16_cuda_graph": base["fp16"]["graph"],
        "copy_gbps": base["copy_gbps"],
        "bytes_read": _cache_bytes(p),
    }
    if p["mode"] == "fp16":
        raw["times_ms"] = base["fp16"]["times"]
        raw["max_abs_err_vs_fp32"] = float((_fp16_attention(q, k, v, scale) - ref).abs().max())
        raw.update(num_splits=0, injected_flips=0, corrected=0, detected=0, cuda_graph=base["fp16"]["graph"])
        return raw
    cache = _build_cache(p, dev, k, v)
    splits = p["num_splits"] or None
    counters = torch.zeros(2, dtype=torch.int64, device=dev)
    tune = {"block_n": p["block_n"], "num_warps": p["num_warps"]}
    out = cache.attend(0, q, backend="triton", counters=counters, num_splits=splits, **tune)
    corrected, detected = int(counters[0]), int(counters[1])  # one call's counts, before timing adds more
    from kernels.paged_attention import auto_num_splits

    cfg = cache.config
    used = splits or auto_num_splits(
        p["batch"], k.shape[1], p["context"], cfg.head_dim, cache.k_scale[0].shape[3], cfg.codec, torch.device(dev),
        interpolate=cfg.interpolate, block_n=p["block_n"], num_warps=p["num_warps"], lazy=cache.lazy_correction(),
    )  # the split count the kernel picked (the adaptive mode's sink launch adds one)
    # timed with the same counters (one compiled variant; the atomics are two per program)
    step, graphed = _graphed(
        lambda: cache.attend(0, q, counters=counters, num_splits=splits, **tune), dev, p["cuda_graph"], ctx
    )
    raw["times_ms"] = time_fn(step, device=dev, warmup=p["warmup"], repeats=p["repeats"], flush_l2=p["flush_l2"])
    raw.update(
        num_splits=int(used),
        injected_flips=int(cache.stats["injected_flips"]),
        corrected=corrected,
        detected=detected,
        cuda_graph=graphed,
        max_abs_err_vs_fp32=float((out.float() - ref.float()).abs().max()),
    )
    return raw


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Median latency, bytes read, GB/s, and the ratios to the fp16 baseline and to copy bandwidth."""
    st = time_stats(raw["times_ms"])
    fp = time_stats(raw["fp16_times_ms"])
    gbps = raw["bytes_read"] / (st["median_ms"] * 1e-3) / 1e9
    copy = raw["copy_gbps"]
    return {
        "median_ms": st["median_ms"],
        "iqr_ms": st["iqr_ms"],
        "fp16_median_ms": fp["median_ms"],
        "fp16_kernel": raw["fp16_kernel"],
        "ratio_to_fp16": st["median_ms"] / fp["median_ms"],
        "bytes_read": raw["bytes_read"],
        "gbps": gbps,
        "copy_gbps": copy if copy == copy else -1.0,  # NaN on CPU: no copy bound measured
        "ratio_to_copy": gbps / copy if copy == copy and copy > 0 else -1.0,
        "num_splits": raw["num_splits"],
        "injected_flips": raw["injected_flips"],
        "corrected": raw["corrected"],
        "detected": raw["detected"],
        "max_abs_err_vs_fp32": raw["max_abs_err_vs_fp32"],
        "cuda_graph": int(bool(raw["cuda_graph"])),
        "fp16_cuda_graph": int(bool(raw["fp16_cuda_graph"])),
    }


def plots(df: pd.DataFrame, outdir: Path) -> None:
    """Latency versus context, one line per mode, one PNG per (shape, batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    need = {"shape", "batch", "context", "mode", "median_ms"}
    if df.empty or not need <= set(df.columns):
        return
    outdir = Path(outdir)
    for (shape, batch), sub in df.groupby(["shape", "batch"]):
        fig, ax = plt.subplots(figsize=(6, 4))
        for mode, g in sub.groupby("mode"):
            g = g.groupby("context", as_index=False)["median_ms"].median().sort_values("context")
            ax.plot(g["context"], g["median_ms"], marker="o", label=str(mode))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("decode attention, median ms")
        ax.set_title(f"{shape}, batch {batch}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(outdir / f"attention_bench_{shape}_b{batch}.png", dpi=120)
        plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Debug entry point: run points in-process and print one summary line each (no run records).

    ``python -m ecc_kv.experiments.attention_bench --shape llama-3.1-8b --batch 1 --context 8192 32768
    --modes fp16 int4 int4-hamming84 int12-golay [--json out.json]``
    """
    import argparse
    import json
    import tempfile

    _interpret_on_cpu()

    from ecc_kv.timing import default_device
    from pipeline.context import RunContext

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--shape", nargs="+", default=["llama-3.1-8b"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1])
    ap.add_argument("--context", nargs="+", type=int, default=[8192])
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--repeats", type=int, default=DEFAULTS["repeats"])
    ap.add_argument("--ber", type=float, default=0.0)
    ap.add_argument("--block-n", type=int, default=DEFAULTS["block_n"])
    ap.add_argument("--num-warps", type=int, default=DEFAULTS["num_warps"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    ctx = RunContext.for_tests(tempfile.mkdtemp(), device=default_device())
    rows = []
    for shape in args.shape:
        for batch in args.batch:
            for context in args.context:
                for mode in args.modes:
                    p = {"shape": shape, "batch": batch, "context": context, "mode": mode, "repeats": args.repeats,
                         "ber": args.ber if mode != "fp16" else 0.0, "block_n": args.block_n,
                         "num_warps": args.num_warps}  # fmt: skip
                    try:
                        sm = summarize(run(p, ctx))
                    except Exception as exc:  # noqa: BLE001  # one failing mode must not hide the others
                        print(f"{shape} B={batch} T={context} {mode}: FAILED {type(exc).__name__}: {exc}", flush=True)
                        continue
                    rows.append({**p, **sm})
                    print(
                        f"{shape:>13} B={batch:<3} T={context:<7} {mode:>22}: {sm['median_ms']:.4f} ms "
                        f"x{sm['ratio_to_fp16']:.2f} fp16 ({sm['fp16_kernel']}) {sm['gbps']:.0f} GB/s "
                        f"{100 * sm['ratio_to_copy']:.0f}% of copy {sm['copy_gbps']:.0f} GB/s splits={sm['num_splits']}",
                        flush=True,
                    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
