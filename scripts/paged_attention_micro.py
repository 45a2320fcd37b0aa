"""Microbenchmark of the fused paged decode attention variants (issue 4 tuning; not the pipeline).

    PYTHONPATH=. python3 scripts/paged_attention_micro.py --budget 120 --out $OUT/micro.jsonl

Each record: shape, mode, block_n, num_warps, prefetch, num_splits, median ms of CUDA-graph replays
with L2 flushed, GB/s on the bytes the mode reads, fraction of copy bandwidth, ratio to fp16 SDPA
(flash) measured in the same process, max abs error vs the torch reference, registers/spills/shared.

A variant is ``block_n,num_warps,prefetch`` followed by optional flags: ``T`` / ``N`` (packed-word
kernel with / without the tile as the M side), ``E`` (Hamming(8,4): correct every tile, not only
tiles with an error), ``P`` (plain-Triton nibble conversion instead of inline PTX), ``old:MODULE``
(time ``MODULE.paged_decode_attention`` instead, e.g. an earlier copy of the kernels on PYTHONPATH).
``--ber`` injects bit errors into the stored cache (each value is its own pass).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ecc_kv.cache import ECCCacheConfig, PagedECCCache
from ecc_kv.timing import copy_bandwidth_gbps

HQ, HKV, D, BS = 32, 8, 128, 16


def timed(fn, reps: int = 25) -> float:
    """Median ms of CUDA-graph replays of ``fn``, 256 MB L2 flush before each."""
    fn()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    ts = []
    for _ in range(reps + 3):
        flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts[3:])


def build(mode: str, b: int, t: int, ber: float = 0.0) -> PagedECCCache:
    sink = 1 if mode == "adaptive" else 0
    cfg = ECCCacheConfig(num_layers=1, num_kv_heads=HKV, head_dim=D, num_blocks=b * (-(-t // BS)), block_size=BS,
                         mode=mode, sink_blocks=sink)  # fmt: skip
    cache = PagedECCCache(cfg, max_seqs=b, device="cuda", block_order_seed=0)
    slots = cache.allocate(t)
    k = torch.randn(b * t, HKV, D, device="cuda", dtype=torch.float16)
    cache.write(0, k, k.flip(0), slots, backend="triton")
    if ber:
        cache.inject_faults(ber, seed=1)
    return cache


def attend(cache: PagedECCCache, q: torch.Tensor, cnt: torch.Tensor, sp: int, bn: int, nw: int, pf: bool,
           flags: tuple[str, ...] = ()) -> torch.Tensor:  # fmt: skip
    """``cache.attend`` with the kernel knobs it does not expose (prefetch, layout, lazy correction, PTX)."""
    import importlib

    mod = next((f.split(":", 1)[1] for f in flags if f.startswith("old:")), "kernels.paged_attention")
    fn = importlib.import_module(mod).paged_decode_attention
    kw = {}
    if not any(f.startswith("old:") for f in flags):
        if "T" in flags or "N" in flags:
            kw["trans"] = "T" in flags
        if "E" in flags:
            kw["lazy"] = False
        if "P" in flags:
            kw["asm"] = False
    c = cache.config
    sink = None
    if c.sink_layout is not None:
        sink = (cache.k_sink_data[0], cache.k_sink_scale[0], cache.v_sink_data[0], cache.v_sink_scale[0])
    return fn(
        q, cache.k_data[0], cache.k_scale[0], cache.v_data[0], cache.v_scale[0], cache.block_tables, cache.lengths,
        sm_scale=D**-0.5, codec=c.codec, interpolate=c.interpolate, sink=sink, sink_codec=c.sink_codec,
        sink_tokens=c.sink_tokens, counters=cnt, num_splits=sp, max_len=max(cache.host_lengths), block_n=bn,
        num_warps=nw, prefetch=pf, **kw,
    )  # fmt: skip


def nbytes(mode: str, b: int, t: int) -> int:
    sink = 1 if mode == "adaptive" else 0
    cfg = ECCCacheConfig(1, HKV, D, num_blocks=1, block_size=BS, mode=mode, sink_blocks=sink)
    return int(round(cfg.bytes_per_token(t) * b * t))


def compiled_info() -> list[dict]:
    """Registers / spills / shared bytes of every compiled variant of the attention kernels."""
    from kernels import paged_attention as pa
    from kernels import paged_attention_golay as pg
    from kernels import paged_attention_words as pw

    keep = ("BLOCK_N", "CODEC", "TRANS", "LAZY", "ASM", "PREFETCH", "WORDS", "PARTIAL")
    out = []
    for name, fn in (("words", pw._paged_decode_words_kernel), ("golay", pg._paged_decode_golay_kernel),
                     ("pervalue", pa._paged_decode_kernel), ("reduce", pa._reduce_kernel)):  # fmt: skip
        try:
            for cache in fn.device_caches.values():
                for k in cache[0].values():
                    cst = {}
                    for key, val in getattr(getattr(k, "src", None), "constants", {}).items():
                        nm = fn.arg_names[key[0]] if isinstance(key, tuple) and len(key) == 1 else str(key)
                        if nm in keep:
                            cst[nm] = str(val)
                    out.append({"kernel": name, "regs": k.n_regs, "spills": k.n_spills, "shared": k.metadata.shared,
                                "warps": k.metadata.num_warps, "const": cst})  # fmt: skip
        except Exception as e:  # noqa: BLE001
            out.append({"kernel": name, "error": repr(e)[:200]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=120)
    ap.add_argument("--out", default="micro.jsonl")
    ap.add_argument("--modes", nargs="+", default=["int4-hamming84", "int12-golay", "int4", "int4-hamming",
                                                   "int4-hamming84-interp", "adaptive"])  # fmt: skip
    ap.add_argument("--points", nargs="+", default=["1x8192", "32x8192"])
    ap.add_argument("--variants", nargs="+", default=["64,4,1", "64,4,0", "32,4,1", "128,4,1", "64,8,1", "32,4,0"])
    ap.add_argument("--splits", nargs="*", default=["0"], help="splits multipliers at batch 1 (0: default only)")
    ap.add_argument("--ber", nargs="+", type=float, default=[0.0], help="bit error rates injected (one pass each)")
    args = ap.parse_args()
    deadline = time.time() + args.budget
    f = open(args.out, "a")

    def emit(rec: dict) -> None:
        print(json.dumps(rec), flush=True)
        f.write(json.dumps(rec) + "\n")
        f.flush()

    from kernels.paged_attention import default_num_splits

    copy = copy_bandwidth_gbps(512 * 2**20, device="cuda")
    emit({"copy_gbps": copy, "gpu": torch.cuda.get_device_name()})
    from torch.nn.attention import SDPBackend, sdpa_kernel

    pts = [tuple(int(x) for x in pt.split("x")) for pt in args.points]
    qs, f16s = {}, {}
    for b, t in pts:
        q = torch.randn(b, HQ, D, device="cuda", dtype=torch.float16)
        kf = torch.randn(b, HKV, t, D, device="cuda", dtype=torch.float16)
        vf = torch.randn_like(kf)

        def sdpa(q=q, kf=kf, vf=vf) -> torch.Tensor:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                return torch.nn.functional.scaled_dot_product_attention(q[:, :, None], kf, vf, enable_gqa=True)

        f16s[(b, t)] = timed(sdpa)
        qs[(b, t)] = q
        emit({"b": b, "t": t, "mode": "fp16", "ms": f16s[(b, t)], "frac_copy": 4 * kf.numel() / f16s[(b, t)] / 1e6 / copy})
        del kf, vf, sdpa
    for ber in args.ber:
        for mode in args.modes:
            for b, t in pts:
                if time.time() > deadline:
                    emit({"stop": "budget", "at": [b, t, mode, ber]})
                    break
                q, f16 = qs[(b, t)], f16s[(b, t)]
                cache = build(mode, b, t, ber)
                ref = cache.attend(0, q, backend="torch").float()
                nb = nbytes(mode, b, t)
                cnt = torch.zeros(2, dtype=torch.int64, device="cuda")
                for var in args.variants:
                    parts = var.split(",")
                    bn, nw, pf = (int(x) for x in parts[:3])
                    flags = tuple(parts[3:])
                    base = default_num_splits(b, HKV, t, bn, torch.device("cuda"))
                    mults = [float(m) for m in args.splits] if b == 1 else [0.0]
                    for mult in mults:
                        if time.time() > deadline:
                            break
                        sp = base if mult == 0 else max(1, int(base * mult))
                        rec = {"b": b, "t": t, "mode": mode, "ber": ber, "var": var, "bn": bn, "nw": nw, "pf": pf,
                               "splits": sp}  # fmt: skip
                        try:
                            def fn(cache=cache, q=q, cnt=cnt, sp=sp, bn=bn, nw=nw, pf=pf, flags=flags) -> torch.Tensor:
                                return attend(cache, q, cnt, sp, bn, nw, bool(pf), flags)

                            rec["err"] = float((fn().float() - ref).abs().max())
                            ms = timed(fn)
                            rec.update(ms=round(ms, 5), frac_copy=round(nb / ms / 1e6 / copy, 3), x_fp16=round(ms / f16, 3))
                        except Exception as e:  # noqa: BLE001
                            rec["error"] = repr(e)[:300]
                        emit(rec)
                del cache
                torch.cuda.empty_cache()
    for rec in compiled_info():
        emit(rec)


if __name__ == "__main__":
    main()
