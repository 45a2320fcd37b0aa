"""Task kind ``kv_pack_bench``: speed of adaptive quantize+pack and unpack+dequantize.

One run = one (size, width distribution, outliers, backend) point. The tensor is a K cache
``[1, heads, T, head_dim]`` in fp16 with ``values`` elements; every token gets its own width
(uniform over ``bits_lo..bits_hi``, as QAQ produces) or one fixed width. Timed with
``ecc_kv.timing`` (CUDA events, warm-up excluded, L2 flushed): the whole ``quantize_pack``
call (two launches, width sums then the fused kernel: offsets found on the device, no host
sync) and the whole ``unpack_dequantize`` call (the same two launches), each twice: with the
host queued ``host_lead_ms`` ahead (``time_fn``: the window holds device time, the headline
``*_frac_copy``), and without (``*_with_host_*``: at 16M values the Python side of a call,
90-190 us on the H100 host, outlasts the kernels, so that number is host latency), and in the same run a
device-to-device copy of the fp16 tensor. Effective bandwidth counts every byte each call reads plus writes: pack reads the fp16
values and the widths as given (int64 per token, as QAQ allocates them) and writes codes,
uint8 widths, scales, zeros and outliers (``byte_report``'s real bytes); unpack reads those
real bytes and writes the fp16 values; both also touch the width-sum workspace (written by the
first launch, read by the second). Re-reads that hit L2 (the uint8 widths the pack's first
launch writes and its second reads, each program's block sums) are not counted. Target
(issue 7, H100, >= 16M values): both ops >= 50% of copy bandwidth. Torch and Triton are compared byte for byte in the same run.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from ecc_kv.bitpack import byte_report, quantize_pack, unpack_dequantize
from ecc_kv.experiments import _shapes_common as sc
from ecc_kv.timing import copy_bandwidth_gbps, time_fn, time_stats

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.context import RunContext

DEFAULTS: dict[str, Any] = {
    "values": 1 << 24, "heads": 8, "head_dim": 128, "bits_lo": 2, "bits_hi": 8, "outliers": 0.0,
    "scheme": "minmax", "backend": "triton", "warmup": 5, "repeats": 30, "flush_l2": True, "seed": 0,
    "host_lead_ms": 0.5,
}


def validate(params: dict[str, Any]) -> None:
    p = {**DEFAULTS, **params}
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"kv_pack_bench: unknown parameter(s) {unknown}; valid: {', '.join(DEFAULTS)}")
    if not 1 <= p["bits_lo"] <= p["bits_hi"] <= 8:
        raise ValueError(f"kv_pack_bench: need 1 <= bits_lo <= bits_hi <= 8, got {p['bits_lo']}, {p['bits_hi']}")
    if p["values"] % (p["heads"] * p["head_dim"]):
        raise ValueError(f"kv_pack_bench: values={p['values']} is not a multiple of heads*head_dim")
    if p["backend"] not in ("torch", "triton"):
        raise ValueError(f"kv_pack_bench: backend={p['backend']!r} is not one of ('torch', 'triton')")
    sc.nonneg_float(p, "host_lead_ms", DEFAULTS["host_lead_ms"])


def run(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Time the two fused ops and the copy on the same tensor."""
    p = {**DEFAULTS, **params}
    validate(p)
    dev = ctx.device
    if dev != "cuda":  # the Triton kernels run interpreted; the flag must be set before they are imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from kernels.bitpack import workspace_bytes  # after TRITON_INTERPRET is settled

    t = p["values"] // (p["heads"] * p["head_dim"])
    g = torch.Generator(device="cpu").manual_seed(p["seed"])
    x = torch.randn(1, p["heads"], t, p["head_dim"], generator=g).to(dev, torch.float16)  # [1, H, T, D]
    bits = torch.randint(p["bits_lo"], p["bits_hi"] + 1, (1, p["heads"], t), generator=g).to(dev)
    kw = {"scheme": p["scheme"], "outliers": p["outliers"], "adaptive": True, "backend": p["backend"]}
    packed = quantize_pack(x, bits, **kw)
    rep = byte_report(packed)
    ws = workspace_bytes(x.numel() // p["head_dim"], p["head_dim"])  # written, then read
    bytes_q = 2 * x.numel() + bits.numel() * bits.element_size() + rep["bytes_real"] + 2 * ws
    bytes_dq = rep["bytes_real"] + 2 * x.numel() + 2 * ws
    ops = {"quant_pack": lambda: quantize_pack(x, bits, **kw),
           "unpack_dequant": lambda: unpack_dequantize(packed, torch.float16, p["backend"])}
    timed = {}
    for op, fn in ops.items():  # device time (host queued ahead), then with the host's latency in the window
        timed[f"times_{op}_ms"] = time_fn(fn, device=dev, warmup=p["warmup"], repeats=p["repeats"],
                                          flush_l2=p["flush_l2"], host_lead_ms=p["host_lead_ms"])
        timed[f"times_{op}_with_host_ms"] = time_fn(fn, device=dev, warmup=p["warmup"], repeats=p["repeats"],
                                                    flush_l2=p["flush_l2"])
    copy = copy_bandwidth_gbps(2 * x.numel(), device=dev)
    ref = quantize_pack(x, bits, **{**kw, "backend": "torch"})
    ok = all(torch.equal(getattr(ref, f), getattr(packed, f)) for f in ("data", "widths", "scale", "zero", "out_val"))
    ok = ok and torch.equal(ref.out_pos, packed.out_pos)
    ok = ok and torch.equal(unpack_dequantize(packed, torch.float16, "torch"),
                            unpack_dequantize(packed, torch.float16, p["backend"]))
    del ref
    return {**timed, "copy_gbps": copy, "bytes_quant_pack": bytes_q,
            "bytes_unpack_dequant": bytes_dq, "storage": rep, "bit_exact_vs_torch": bool(ok), "values": x.numel(),
            "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu"}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Median times, GB/s and the fraction of copy bandwidth for both ops."""
    out: dict[str, Any] = {"copy_gbps": raw["copy_gbps"], "device": raw["device"], "values": raw["values"],
                           "bit_exact_vs_torch": raw["bit_exact_vs_torch"], "avg_bits": raw["storage"]["avg_bits"],
                           "ratio_real": raw["storage"]["ratio_real"]}
    for op in ("quant_pack", "unpack_dequant"):
        st = time_stats(raw[f"times_{op}_ms"])
        gbps = raw[f"bytes_{op}"] / (st["median_ms"] * 1e-3) / 1e9
        out[f"{op}_median_ms"] = st["median_ms"]
        out[f"{op}_iqr_ms"] = st["iqr_ms"]
        out[f"{op}_gbps"] = gbps
        out[f"{op}_frac_copy"] = gbps / raw["copy_gbps"]
        if f"times_{op}_with_host_ms" in raw:  # host latency inside the window (launch-bound at small sizes)
            wall = time_stats(raw[f"times_{op}_with_host_ms"])["median_ms"]
            out[f"{op}_with_host_median_ms"] = wall
            out[f"{op}_with_host_frac_copy"] = raw[f"bytes_{op}"] / (wall * 1e-3) / 1e9 / raw["copy_gbps"]
    return out


def plots(df: Any, outdir: Path) -> list[Path]:
    """Bandwidth vs size per op, the copy bandwidth on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    d = df.sort_values("values")
    for op in ("quant_pack", "unpack_dequant"):
        ax.plot(d["values"], d[f"{op}_gbps"], "o-", label=op)
    ax.plot(d["values"], d["copy_gbps"], "k--", label="copy")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("values")
    ax.set_ylabel("GB/s (bytes read + written)")
    ax.legend()
    ax.grid(alpha=0.3)
    path = outdir / "kv_pack_bench_gbps.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]
