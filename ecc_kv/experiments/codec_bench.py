"""Task kind ``codec_bench``: throughput of the ECC codecs on the stored layouts versus a device copy.

One run is one (codec, tensor size) point. The tensor is ``n_values`` INT4 values as rows of
``head_dim`` (a K/V cache of n/head_dim token-heads). Timed operations (``ops``):

- ``encode``: plain packed INT4 -> stored layout (``kernels.packed_codecs.encode_packed``)
- ``decode``: stored layout -> packed INT4 + corrected/detected counts (no status bytes)
- ``inject_decode``: the same with bit errors (``ber``, ``model``) injected on the fly
- ``quantize_encode``: fp16 rows -> stored layout + fp16 scales, one kernel (``kernels.fused_codec``)
- ``decode_dequantize``: stored layout + scales -> fp16 rows, one kernel
- ``decode_algebraic`` (Golay only): ``decode`` with the algebraic decoder instead of the table

Effective bandwidth = (bytes read + bytes written) / median time; ``ratio_to_copy`` divides it
by the bandwidth of a device-to-device copy of the stored bytes timed in the same run with the
same settings (L2 flushed before every call when ``flush_l2``; the GPU held ``host_lead_ms`` so
the host has queued each call before its window opens, which keeps the Python side of a launcher,
90-190 us a call on the H100 host, out of the device time). On CPU the torch reference chain
runs instead (``backend=auto``), so the task also runs on a laptop, slowly and with small sizes.
Every run checks that decode(encode(x)) and the fused round trip reproduce the quantized codes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ecc_kv import layouts
from ecc_kv.codecs import CODEC_NAMES, canonical_name
from ecc_kv.experiments import _shapes_common as sc
from ecc_kv.quant import dequantize_int4, quantize_int4
from ecc_kv.timing import time_fn, time_stats

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.context import RunContext

KIND = "codec_bench"
CODECS = (*CODEC_NAMES, "int4")
OPS = ("encode", "decode", "inject_decode", "quantize_encode", "decode_dequantize", "decode_algebraic")
DEFAULTS: dict[str, Any] = {
    "codec": "hamming84",
    "n_values": 64 * 2**20,
    "head_dim": 0,  # 0: 128, or 96 for golay2412 (rows must hold whole codewords)
    "ops": list(OPS),
    "ber": 1.0e-3,
    "model": "bsc",
    "burst_len": 2,
    "seed": 0,
    "warmup": 5,
    "repeats": 30,
    "flush_l2": True,
    "host_lead_ms": 0.5,  # the GPU waits this long before each timed call: the window holds device time only
    "backend": "auto",  # auto: triton on cuda, torch on cpu
    "device": "auto",
}


def _int(p: dict[str, Any], key: str, lo: int) -> int:
    v = p[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{key}={v!r} must be an int >= {lo}")
    return v


def validate(params: dict[str, Any]) -> None:
    """Reject unknown keys, codecs, ops and impossible sizes, naming the key."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for codec_bench; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    if p["codec"] != "int4":
        try:
            canonical_name(p["codec"])
        except (ValueError, TypeError):
            raise ValueError(f"codec={p['codec']!r} is not one of {list(CODECS)} (alias: golay)") from None
    if not isinstance(p["ops"], (list, tuple)) or not p["ops"] or any(o not in OPS for o in p["ops"]):
        raise ValueError(f"ops={p['ops']!r} must be a non-empty list drawn from {list(OPS)}")
    for key, lo in (("n_values", 1), ("head_dim", 0), ("burst_len", 1), ("seed", 0), ("warmup", 0), ("repeats", 1)):
        _int(p, key, lo)
    if not isinstance(p["ber"], (int, float)) or not 0.0 <= float(p["ber"]) < 0.5:
        raise ValueError(f"ber={p['ber']!r} must be a number in [0, 0.5)")
    sc.nonneg_float(p, "host_lead_ms", DEFAULTS["host_lead_ms"])
    if p["model"] not in ("bsc", "burst"):
        raise ValueError(f"model={p['model']!r} is not one of ['bsc', 'burst']")
    if p["backend"] not in ("auto", "torch", "triton"):
        raise ValueError(f"backend={p['backend']!r} is not one of ['auto', 'torch', 'triton']")
    if p["device"] not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={p['device']!r} is not one of ['auto', 'cpu', 'cuda']")
    name = _name(p["codec"])
    d = _head_dim(name, p["head_dim"])
    unit = layouts.KERNEL_GROUP_VALUES[name]
    if d % unit:
        raise ValueError(f"head_dim={d} must be a multiple of {unit} for codec {name}")
    if p["n_values"] < d:
        raise ValueError(f"n_values={p['n_values']} must be at least one row of head_dim={d}")


def _name(codec: str) -> str:
    return "int4" if codec == "int4" else canonical_name(codec)


def _head_dim(name: str, head_dim: int) -> int:
    return head_dim or (96 if name == "golay2412" else 128)


def _op_list(name: str, ops: list[str]) -> list[str]:
    """Ops that exist for this codec (plain INT4 has only the fused quantize paths)."""
    if name == "int4":
        return [o for o in ops if o in ("quantize_encode", "decode_dequantize")]
    return [o for o in ops if o != "decode_algebraic" or name == "golay2412"]


def _ops(name: str, backend: str, p: dict[str, Any], x: torch.Tensor, d: int) -> tuple[dict[str, Callable[[], Any]], dict[str, tuple[int, int]], dict[str, Any]]:
    """Closures to time, (bytes read, bytes written) per op, and the state they share."""
    r = x.shape[0]
    n = r * d
    codes, scales = quantize_int4(x, backend=backend)  # [R, D] uint8, [R, 1] fp16
    packed = layouts.pack_int4(codes)  # [R, D/2]
    sb = r * layouts.nbytes(name, d)  # stored bytes
    sc = scales.numel() * 2
    st: dict[str, Any] = {"codes": codes, "scales": scales, "packed": packed}
    ops: dict[str, Callable[[], Any]] = {}
    nbytes = {
        "encode": (n // 2, sb), "decode": (sb, n // 2), "inject_decode": (sb, n // 2), "decode_algebraic": (sb, n // 2),
        "quantize_encode": (n * x.element_size(), sb + sc), "decode_dequantize": (sb + sc, n * 2),
    }
    if backend == "triton":
        from kernels.fused_codec import decode_dequantize, quantize_encode
        from kernels.packed_codecs import decode_packed, encode_packed

        st["stored"] = quantize_encode(name, x)[0]
        if name != "int4":
            ops["encode"] = lambda: encode_packed(name, packed, d, out=st["stored"])
            out = torch.empty_like(packed)
            cnt = torch.zeros(2, dtype=torch.int32, device=x.device)
            st["decoded"], st["counts"] = out, cnt
            ops["decode"] = lambda: decode_packed(name, st["stored"], d, with_status=False, out=out, counts=cnt)
            ops["decode_algebraic"] = lambda: decode_packed(name, st["stored"], d, with_status=False, algebraic=True, out=out, counts=cnt)
            ops["inject_decode"] = lambda: decode_packed(
                name, st["stored"], d, with_status=False, out=out, counts=cnt,
                ber=float(p["ber"]), seed=p["seed"], model=p["model"], burst_len=p["burst_len"],
            )  # fmt: skip
        ops["quantize_encode"] = lambda: quantize_encode(name, x)
        ops["decode_dequantize"] = lambda: decode_dequantize(name, st["stored"], scales, d)
    else:
        from ecc_kv.faults import inject

        st["stored"] = packed.clone() if name == "int4" else layouts.encode_stored(name, packed, d)
        if name != "int4":
            ops["encode"] = lambda: layouts.encode_stored(name, packed, d)
            ops["decode"] = lambda: layouts.decode_stored(name, st["stored"], d)
            ops["decode_algebraic"] = ops["decode"]  # the torch reference has one decoder path here

            def inject_decode() -> Any:
                words = st["stored"].reshape(-1).view(torch.int32)
                flipped, _ = inject(words, 32, float(p["ber"]), p["seed"], p["model"], p["burst_len"])
                return layouts.decode_stored(name, flipped.view(torch.uint8).reshape(st["stored"].shape), d)

            ops["inject_decode"] = inject_decode

        def q_enc() -> Any:
            c, s = quantize_int4(x)
            pk = layouts.pack_int4(c)
            return (pk if name == "int4" else layouts.encode_stored(name, pk, d)), s

        def dec_deq() -> Any:
            pk = st["stored"] if name == "int4" else layouts.decode_stored(name, st["stored"], d)[0]
            return dequantize_int4(layouts.unpack_int4(pk, d), scales)

        ops["quantize_encode"] = q_enc
        ops["decode_dequantize"] = dec_deq
    return ops, nbytes, st


def _check(name: str, backend: str, st: dict[str, Any], d: int) -> bool:
    """decode(encode(codes)) == codes and the fused round trip == dequantize(codes)."""
    codes, scales, packed, stored = st["codes"], st["scales"], st["packed"], st["stored"]
    if name == "int4":
        ok = torch.equal(stored, packed)
    else:
        ok = torch.equal(layouts.decode_stored(name, stored, d, backend=backend)[0], packed)
    if backend == "triton":
        from kernels.fused_codec import decode_dequantize

        y = decode_dequantize(name, stored, scales, d)[0]
        ok = ok and torch.equal(y, dequantize_int4(codes, scales))
    return bool(ok)


def run(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Time every op of one codec at one size, and a copy of the stored bytes, in one process."""
    p = {**DEFAULTS, **params}
    validate(p)
    dev = ctx.device if p["device"] == "auto" else p["device"]
    backend = p["backend"] if p["backend"] != "auto" else ("triton" if dev == "cuda" else "torch")
    name = _name(p["codec"])
    d = _head_dim(name, p["head_dim"])
    rows = p["n_values"] // d
    gen = torch.Generator(device=dev).manual_seed(p["seed"])
    x = torch.randn(rows, d, generator=gen, device=dev, dtype=torch.float16)  # [R, D]
    ops, nbytes, st = _ops(name, backend, p, x, d)
    on_gpu = dev == "cuda"
    timing = {"device": dev, "warmup": p["warmup"], "repeats": p["repeats"], "flush_l2": bool(p["flush_l2"]) and on_gpu,
              "host_lead_ms": float(p["host_lead_ms"]) if on_gpu else 0.0}
    raw: dict[str, Any] = {"codec": name, "backend": backend, "head_dim": d, "n_values": rows * d, "ops": {}}
    todo = _op_list(name, list(p["ops"]))
    for i, op in enumerate(todo):
        ctx.progress(i, len(todo) + 1, op)
        times = time_fn(ops[op], **timing)
        raw["ops"][op] = {"times_ms": times, "bytes_read": nbytes[op][0], "bytes_written": nbytes[op][1]}
        if op == "inject_decode" and backend == "triton":
            cnt = st["counts"]
            cnt.zero_()
            ops[op]()
            raw["ops"][op].update(corrected=int(cnt[0]), detected=int(cnt[1]))
    stored = st["stored"]
    src = stored.reshape(-1)
    dst = torch.empty_like(src)
    raw["copy"] = {"times_ms": time_fn(lambda: dst.copy_(src), **timing), "bytes": 2 * src.numel()}
    raw["stored_bytes"] = src.numel()
    raw["bits_per_value"] = 8 * src.numel() / (rows * d)
    raw["roundtrip_ok"] = _check(name, backend, st, d)
    ctx.progress(len(todo) + 1, len(todo) + 1, "done")
    return raw


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Per op: median ms, effective GB/s (read + written) and the ratio to the copy GB/s of the same run."""
    copy_ms = time_stats(raw["copy"]["times_ms"])["median_ms"]
    copy_gbps = raw["copy"]["bytes"] / (copy_ms * 1e-3) / 1e9
    out: dict[str, Any] = {
        "n_values": raw["n_values"],
        "head_dim": raw["head_dim"],
        "backend": raw["backend"],
        "bits_per_value": raw["bits_per_value"],
        "copy_median_ms": copy_ms,
        "copy_gbps": copy_gbps,
        "roundtrip_ok": int(raw["roundtrip_ok"]),
    }
    for op, r in raw["ops"].items():
        st = time_stats(r["times_ms"])
        gbps = (r["bytes_read"] + r["bytes_written"]) / (st["median_ms"] * 1e-3) / 1e9
        out[f"{op}_median_ms"] = st["median_ms"]
        out[f"{op}_iqr_ms"] = st["iqr_ms"]
        out[f"{op}_gbps"] = gbps
        out[f"{op}_ratio_to_copy"] = gbps / copy_gbps
        for k in ("corrected", "detected"):
            if k in r:
                out[f"{op}_{k}"] = r[k]
    return out


def plots(df: pd.DataFrame, outdir: Path) -> list[Path]:
    """Effective bandwidth versus size, one line per codec, the copy line on top; one PNG per op."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if df.empty or not {"codec", "n_values", "copy_gbps"} <= set(df.columns):
        return []
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    made = []
    for op in OPS:
        col = f"{op}_gbps"
        if col not in df.columns or df[col].isna().all():
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        copy = df.groupby("n_values", as_index=False)["copy_gbps"].median().sort_values("n_values")
        ax.plot(copy["n_values"], copy["copy_gbps"], "k--", marker="s", label="D2D copy")
        for codec, g in df.dropna(subset=[col]).groupby("codec"):
            g = g.groupby("n_values", as_index=False)[col].median().sort_values("n_values")
            ax.plot(g["n_values"], g[col], marker="o", label=str(codec))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("INT4 values")
        ax.set_ylabel("effective GB/s (read + written)")
        ax.set_title(f"codec_bench: {op}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = outdir / f"codec_bench_{op}_gbps.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        made.append(path)
    return made
