"""Device time of one GPU weight-cache update: the barrier-free launch against the grid-barrier one.

    PYTHONPATH=. python3 scripts/weight_cache_update_micro.py --out $OUT/wc_update.jsonl

Not the pipeline (``specs/weight_cache.yaml`` is): a side-by-side of the two one-launch kernels,
``kernels.weight_cache_update.paired_update`` (every program plans for itself, no grid barrier;
the GPU cache's update) and ``kernels.weight_cache.plan_and_move`` (two grid barriers; the
offloaded cache's update, here fed a device mask), on the same random-walk mask sequence
(A = R = k each step), with a device copy of the same bytes (k rows read and written) timed the
same way in the same process. Times are device time (``ecc_kv.timing.time_fn`` with
``host_lead_ms``): each launch is queued before its window opens, so the host's launch latency
is not in it. After the timing both caches are checked against the pool.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from ecc_kv.sparse_mlp import random_walk_masks
from ecc_kv.timing import time_fn
from kernels.weight_cache import fused_scratch, plan_and_move
from kernels.weight_cache_update import paired_state, paired_update

# (N, hidden, m): the published setting and Llama-3-8B's MLP at 10% density
SIZES = [(8192, 1024, 1024), (14336, 4096, 1434)]
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def bench(n: int, h: int, m: int, k: int, dtype: torch.dtype, steps: int, lead: float) -> dict:
    """Median device ms per update of both kernels and of a same-bytes copy, for one setting."""
    gen = torch.Generator().manual_seed(n + k)
    pool = (torch.randn(n, 3 * h, generator=gen) / h**0.5).to("cuda", dtype)  # [N, 3H] bundled rows
    masks = random_walk_masks(n, m, k, 2 * steps + 1, seed=k).cuda()  # [T, N]
    stats = torch.zeros(4, dtype=torch.int32, device="cuda")
    new_buf = torch.zeros(m, 3 * h, dtype=dtype, device="cuda")
    state = paired_state(n, m, "cuda")
    old_buf = torch.zeros_like(new_buf)
    s2n = torch.full((m,), -1, dtype=torch.int32, device="cuda")
    n2s = torch.full((n,), -1, dtype=torch.int32, device="cuda")
    scratch = fused_scratch(n, m, "cuda")
    paired_update(masks[0], state, new_buf, pool, stats)
    plan_and_move(masks[0], n2s, s2n, old_buf, pool, scratch, stats)
    it = {"new": 1, "old": 1}

    def step_new() -> None:
        paired_update(masks[it["new"]], state, new_buf, pool, stats)
        it["new"] += 1

    def step_old() -> None:
        plan_and_move(masks[it["old"]], n2s, s2n, old_buf, pool, scratch, stats)
        it["old"] += 1

    nbytes = k * 3 * h * pool.element_size()
    src = torch.empty(max(nbytes, 1), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    res = {"n": n, "hidden": h, "m": m, "k": k, "dtype": str(dtype).removeprefix("torch."), "bytes_moved": nbytes}
    times: dict[str, list[float]] = {"new": [], "old": [], "copy": []}
    for _ in range(steps // 10):  # round robin in blocks of 10: background load hits all three alike
        times["new"] += time_fn(step_new, device="cuda", warmup=0, repeats=10, host_lead_ms=lead)
        times["old"] += time_fn(step_old, device="cuda", warmup=0, repeats=10, host_lead_ms=lead)
        times["copy"] += time_fn(lambda: dst.copy_(src), device="cuda", warmup=0, repeats=10, host_lead_ms=lead)
    torch.cuda.synchronize()
    for name, buf, act in (("new", new_buf, state.current_slots()), ("old", old_buf, s2n)):
        if not torch.equal(buf, pool[act.clamp(min=0).long()] * (act >= 0)[:, None]):
            raise RuntimeError(f"{name} kernel: buffer differs from pool[active] at n={n} k={k}")
    for name, ts in times.items():
        res[f"{name}_ms"] = statistics.median(ts)
    res["new_copy_frac"] = res["copy_ms"] / res["new_ms"]
    res["old_copy_frac"] = res["copy_ms"] / res["old_ms"]
    res["speedup"] = res["old_ms"] / res["new_ms"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON lines output")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lead", type=float, default=0.5, help="host_lead_ms")
    ap.add_argument("--churn", type=float, nargs="+", default=[0.01, 0.0625, 0.25, 1.0], help="fractions of m")
    args = ap.parse_args()
    with open(args.out, "w") as f:
        for n, h, m in SIZES:
            for dname in ("fp16", "fp32"):
                for c in args.churn:
                    k = max(1, min(round(c * m), n - m))
                    r = bench(n, h, m, k, DTYPES[dname], args.steps, args.lead)
                    print(json.dumps(r), flush=True)
                    f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
