"""kernels.paged_attention vs the torch reference (decode the cache, then SDPA), errors injected."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from ecc_kv.cache import ECCCacheConfig, PagedECCCache
from kernels import codecs as kc
from kernels import paged_attention_unpack as pw

# dtype -> (atol, rtol): outputs are convex combinations of values of magnitude ~1; the kernel
# dots in fp16/bf16 with fp32 accumulation, the reference in fp32 on the same dequantized values
TOL = {torch.float16: (4e-3, 1e-2), torch.bfloat16: (3e-2, 2e-2), torch.float32: (4e-3, 1e-2)}  # fp32: dots in fp16


def assert_close_verbose(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    """allclose with the dtype's tolerance; on failure print the first mismatching indices."""
    atol, rtol = TOL[dtype]
    g, w = got.float().cpu(), want.float().cpu()
    bad = ~torch.isclose(g, w, atol=atol, rtol=rtol)
    if bad.any():
        idx = bad.nonzero()[:8].tolist()
        pairs = [(i, float(g[tuple(i)]), float(w[tuple(i)])) for i in idx]
        raise AssertionError(f"{int(bad.sum())} mismatches (atol={atol}, rtol={rtol}); first (index, got, want): {pairs}")


def _cache(mode: str, lens: list[int], device: str, *, hq_per_kv: int = 4, head_dim: int = 40,
           group_size: int | None = None, ber: float = 0.0, seed: int = 0, num_blocks: int = 24) -> PagedECCCache:  # fmt: skip
    cfg = ECCCacheConfig(
        num_layers=1, num_kv_heads=2, head_dim=head_dim, num_blocks=num_blocks, block_size=4, mode=mode,
        sink_blocks=2 if mode == "adaptive" else 0, group_size=group_size,
    )  # fmt: skip
    cache = PagedECCCache(cfg, max_seqs=len(lens), device=device, block_order_seed=seed)  # shuffled tables
    slots = cache.allocate(lens)
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(len(slots), 2, head_dim, generator=gen).to(device)
    v = torch.randn(len(slots), 2, head_dim, generator=gen).to(device)
    cache.write(0, k, v, slots, backend="triton")
    if ber:
        cache.inject_faults(ber, seed=seed + 11)
    return cache


def _check(
    cache: PagedECCCache, hq: int, dtype: torch.dtype, num_splits: int | None, block_n: int = 16, fast: bool = True,
    prefetch: bool | None = None, words: bool | None = None, asm: bool | None = None,
) -> None:
    from kernels.paged_attention import paged_decode_attention

    c = cache.config
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(cache.max_seqs, hq, c.head_dim, generator=gen).to(dtype).to(cache.device)
    cnt_ref = torch.zeros(2, dtype=torch.int64, device=cache.device)
    ref = cache.attend(0, q, backend="torch", counters=cnt_ref)
    cnt = torch.zeros(2, dtype=torch.int64, device=cache.device)
    sink = None
    if c.sink_layout is not None:
        sink = (cache.k_sink_data[0], cache.k_sink_scale[0], cache.v_sink_data[0], cache.v_sink_scale[0])
    out = paged_decode_attention(
        q, cache.k_data[0], cache.k_scale[0], cache.v_data[0], cache.v_scale[0], cache.block_tables, cache.lengths,
        sm_scale=c.head_dim**-0.5, codec=c.codec, interpolate=c.interpolate, sink=sink, sink_codec=c.sink_codec,
        sink_tokens=c.sink_tokens, counters=cnt, num_splits=num_splits, max_len=max(cache.host_lengths),
        block_n=block_n, fast=fast, prefetch=prefetch, words=words, asm=asm,
    )  # fmt: skip
    assert out.dtype == dtype and out.shape == q.shape
    assert_close_verbose(out, ref, dtype)
    assert cnt.tolist() == cnt_ref.tolist(), f"counters {cnt.tolist()} != reference {cnt_ref.tolist()}"


LENS = [1, 13, 29]  # odd lengths, one shorter than a block, one spanning partial tiles


@pytest.mark.parametrize("mode", ["int4", "int4-hamming", "int4-hamming84", "int12-golay", "adaptive"])
def test_modes_with_errors_split(mode: str, device: str) -> None:
    cache = _cache(mode, LENS, device, ber=0.01)
    if mode != "int4":
        _, _, st = cache.read(0)
        assert int((st > 0).sum()) > 0, "the test must exercise the correction path"
    _check(cache, hq=8, dtype=torch.float16, num_splits=3)


@pytest.mark.parametrize("group, num_splits", [(1, 1), (1, None), (8, 1), (8, None)])  # group 4: the mode tests
def test_gqa_groups_and_split_kv(group: int, num_splits: int | None, device: str) -> None:
    # head_dim 64: the packed-word kernel (the mode tests at head_dim 40 take the per-value one)
    cache = _cache("int4-hamming84", [37, 5], device, ber=0.005, seed=group, head_dim=64)
    _check(cache, hq=2 * group, dtype=torch.float16, num_splits=num_splits)


def test_fp32_query_runs_in_fp16(device: str) -> None:
    cache = _cache("int4-hamming84", [5, 12], device, head_dim=64, ber=0.01)
    _check(cache, hq=4, dtype=torch.float32, num_splits=2)


def test_many_splits_reduce_in_chunks(device: str) -> None:
    # 17 splits > the reduce kernel's chunk of 16; the short sequence leaves most splits empty
    cfg = ECCCacheConfig(num_layers=1, num_kv_heads=1, head_dim=32, num_blocks=80, block_size=4, mode="int4-hamming84")
    cache = PagedECCCache(cfg, max_seqs=2, device=device, block_order_seed=5)
    slots = cache.allocate([260, 3])
    x = torch.randn(len(slots), 1, 32, device=device)
    cache.write(0, x, x.flip(0), slots, backend="torch")  # the write kernel is tested elsewhere
    _check(cache, hq=2, dtype=torch.float16, num_splits=20)


@pytest.mark.parametrize(
    "mode, head_dim, prefetch",
    [("int4", 24, False), ("int4-hamming84", 24, False), ("int4-hamming", 24, True), ("int4-hamming", 8, False),
     ("int12-golay", 8, True), ("int12-golay", 26, False), ("int4-hamming84-interp", 24, False), ("adaptive", 24, False)],
)  # fmt: skip
def test_specialised_kernels_awkward_dims(mode: str, head_dim: int, prefetch: bool, device: str) -> None:
    # head dims below one dot (8 -> padded words / codewords), golay with a partial last codeword (26),
    # Hamming(8,4)'s interleaved columns past D, both loop shapes (next tile loaded ahead or not)
    cache = _cache(mode, [1, 19, 34], device, head_dim=head_dim, ber=0.03 if "interp" in mode else 0.01, seed=3)
    _, _, st = cache.read(0)
    if mode != "int4":
        assert int((st > 0).sum()) > 0, "the test must exercise the correction path"
    _check(cache, hq=4, dtype=torch.float16, num_splits=3, prefetch=prefetch)


@pytest.mark.parametrize("head_dim, words, prefetch", [(40, False, True), (26, False, False), (64, True, False)])
def test_golay_byte_and_word_loads(head_dim: int, words: bool, prefetch: bool, device: str) -> None:
    # word loads realign each plane in registers (row starts at any byte); byte loads are the fallback
    cache = _cache("int12-golay", [3, 21, 33], device, head_dim=head_dim, ber=0.02, seed=5)
    _check(cache, hq=8, dtype=torch.float16, num_splits=2, prefetch=prefetch, words=words)


@pytest.mark.parametrize("head_dim, words", [(96, True), (32, False)])
def test_hamming74_word_and_byte_loads(head_dim: int, words: bool, device: str) -> None:
    # D % 32 == 0: supergroups of 4 groups in 7 aligned words (96: a padded supergroup); byte gather otherwise
    cache = _cache("int4-hamming", [5, 27], device, head_dim=head_dim, ber=0.02, seed=6)
    _check(cache, hq=4, dtype=torch.float16, num_splits=2, words=words)


@pytest.mark.parametrize("mode", ["adaptive", "int12-golay", "int4-hamming"])
def test_block_n_128(mode: str, device: str) -> None:
    # adaptive's Golay sink pool used to run out of shared memory at 128-token tiles (per-value kernel)
    cache = _cache(mode, [150, 7], device, head_dim=64, ber=0.005, seed=2, num_blocks=48)
    _check(cache, hq=8, dtype=torch.float16, num_splits=None, block_n=128)


def test_per_value_kernel_on_word_aligned_rows(device: str) -> None:
    cache = _cache("int4-hamming84", [11, 26], device, head_dim=64, ber=0.01)
    _check(cache, hq=4, dtype=torch.float16, num_splits=2, fast=False)


@pytest.mark.parametrize("mode", ["int4", "int12-golay"])
def test_group_size_scales(mode: str, device: str) -> None:
    cache = _cache(mode, [9, 22], device, head_dim=48, group_size=16, ber=0.01)
    _check(cache, hq=4, dtype=torch.float16, num_splits=2)


@pytest.mark.gpu  # the Triton interpreter's bf16 tl.dot is broken (triton 3.9): compiled only
def test_bf16_query_and_many_splits(device: str) -> None:
    cache = _cache("int4-hamming84", [3, 61], device, ber=0.01, head_dim=64)
    _check(cache, hq=4, dtype=torch.bfloat16, num_splits=8)


def test_interpolation_mode(device: str) -> None:
    pytest.importorskip("ecc_kv.interp")
    cache = _cache("int4-hamming84-interp", [2, 30], device, ber=0.03, seed=4)
    _, _, st = cache.read(0)
    assert int((st == 2).sum()) > 0, "the test must exercise interpolation"
    _check(cache, hq=4, dtype=torch.float16, num_splits=2)


def test_cache_attend_triton_equals_torch(device: str) -> None:
    cache = _cache("int4", [6, 17], device, head_dim=64)
    q = torch.randn(2, 8, 64, dtype=torch.float16, device=device)
    torch.testing.assert_close(cache.attend(0, q), cache.attend(0, q, backend="torch"), atol=4e-3, rtol=1e-2)


def test_rejects_bad_arguments(device: str) -> None:
    from kernels.paged_attention import paged_decode_attention

    cache = _cache("int4", [3], device)
    c = cache.config
    q = torch.randn(1, 4, 40, dtype=torch.float16, device=device)
    args = (cache.k_data[0], cache.k_scale[0], cache.v_data[0], cache.v_scale[0], cache.block_tables, cache.lengths)
    with pytest.raises(ValueError, match="codec"):
        paged_decode_attention(q, *args, sm_scale=1.0, codec="bch", max_len=3)
    with pytest.raises(ValueError, match="interpolate"):
        paged_decode_attention(q, *args, sm_scale=1.0, codec=None, interpolate=True, max_len=3)
    with pytest.raises(ValueError, match="multiple"):
        paged_decode_attention(q[:, :3], *args, sm_scale=1.0, codec=c.codec, max_len=3)
    with pytest.raises(ValueError, match="fp16/bf16/fp32"):
        paged_decode_attention(q.double(), *args, sm_scale=1.0, codec=c.codec, max_len=3)
    with pytest.raises(ValueError, match="block_n"):
        paged_decode_attention(q, *args, sm_scale=1.0, codec=c.codec, max_len=3, block_n=48)


@triton.jit
def _probe_kernel(w_ptr, lo_ptr, hi_ptr, nib_ptr, half_ptr, dec_ptr, cnt_ptr, N, ASM: tl.constexpr, BLOCK: tl.constexpr):
    """The packed-word kernels' device helpers on their own: nibbles -> fp16 (8 per word, and the Golay
    kernel's 3 per 16-bit half), Hamming(8,4) decode, flag counts."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    w = tl.load(w_ptr + i, mask=m, other=0).to(tl.uint32, bitcast=True)
    n0, n1, n2, n3, n4, n5, n6, n7 = pw._nibbles(w, ASM)
    tl.store(nib_ptr + 8 * i + 0, n0, mask=m)
    tl.store(nib_ptr + 8 * i + 1, n1, mask=m)
    tl.store(nib_ptr + 8 * i + 2, n2, mask=m)
    tl.store(nib_ptr + 8 * i + 3, n3, mask=m)
    tl.store(nib_ptr + 8 * i + 4, n4, mask=m)
    tl.store(nib_ptr + 8 * i + 5, n5, mask=m)
    tl.store(nib_ptr + 8 * i + 6, n6, mask=m)
    tl.store(nib_ptr + 8 * i + 7, n7, mask=m)
    h0, h1, h2, h4, h5, h6 = pw._half_nibbles(w, ASM)
    tl.store(half_ptr + 6 * i + 0, h0, mask=m)
    tl.store(half_ptr + 6 * i + 1, h1, mask=m)
    tl.store(half_ptr + 6 * i + 2, h2, mask=m)
    tl.store(half_ptr + 6 * i + 3, h4, mask=m)
    tl.store(half_ptr + 6 * i + 4, h5, mask=m)
    tl.store(half_ptr + 6 * i + 5, h6, mask=m)
    lo = tl.load(lo_ptr + i, mask=m, other=0).to(tl.uint32, bitcast=True)
    hi = tl.load(hi_ptr + i, mask=m, other=0).to(tl.uint32, bitcast=True)
    d, c, e = pw._h84_decode(lo, hi)
    rd, rc, re = kc.hamming84_decode_word(lo, hi)
    tl.store(dec_ptr + 6 * i + 0, d.to(tl.int32, bitcast=True), mask=m)
    tl.store(dec_ptr + 6 * i + 1, c.to(tl.int32, bitcast=True), mask=m)
    tl.store(dec_ptr + 6 * i + 2, e.to(tl.int32, bitcast=True), mask=m)
    tl.store(dec_ptr + 6 * i + 3, rd.to(tl.int32, bitcast=True), mask=m)
    tl.store(dec_ptr + 6 * i + 4, rc.to(tl.int32, bitcast=True), mask=m)
    tl.store(dec_ptr + 6 * i + 5, re.to(tl.int32, bitcast=True), mask=m)
    tl.store(cnt_ptr + i, pw._count_pair(c, e, ASM), mask=m)


def _nibble_perm(x: torch.Tensor) -> torch.Tensor:
    """Words with nibble n = value n -> nibble n = value PERM[n] (PERM = 0 4 1 5 2 6 3 7, ``_h84_decode``'s order)."""
    out = torch.zeros_like(x)
    for n, v in enumerate((0, 4, 1, 5, 2, 6, 3, 7)):
        out |= ((x >> (4 * v)) & 15) << (4 * n)
    return out


def _probe(device: str, asm: bool) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(7)
    b = torch.arange(256, dtype=torch.int64)
    every_byte = b | (b << 8) | (b << 16) | (b << 24)  # every codeword byte in every lane
    rnd = torch.randint(0, 2**32, (2, 1792), generator=gen, dtype=torch.int64)
    lo = torch.cat([every_byte, every_byte, rnd[0]])
    hi = torch.cat([every_byte, every_byte.flip(0), rnd[1]])
    n = lo.numel()
    w = torch.randint(0, 2**32, (n,), generator=gen, dtype=torch.int64)
    w[:65536 // 32] = every_byte[:8].repeat(256)  # a few structured words too

    def i32(x: torch.Tensor) -> torch.Tensor:  # uint32 bit patterns as int32
        return (x - (x >= 2**31).long() * 2**32).to(torch.int32).to(device)

    nib = torch.empty(n, 8, dtype=torch.float16, device=device)
    half = torch.empty(n, 6, dtype=torch.float16, device=device)
    dec = torch.empty(n, 6, dtype=torch.int32, device=device)
    cnt = torch.empty(n, dtype=torch.int32, device=device)
    _probe_kernel[(triton.cdiv(n, 256),)](i32(w), i32(lo), i32(hi), nib, half, dec, cnt, n, ASM=asm, BLOCK=256)
    return w, torch.cat([nib.cpu(), half.cpu()], 1), dec.cpu().long() & 0xFFFFFFFF, cnt.cpu()


def test_word_helpers_match_codecs(device: str) -> None:
    # the plain (interpreter) versions: nibble values, the Hamming(8,4) decode against kernels.codecs, counts
    w, nib, dec, cnt = _probe(device, asm=False)
    want = torch.stack([((w >> (4 * j)) & 15) - 8 for j in (0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 4, 5, 6)], 1)
    assert torch.equal(nib, want.to(torch.float16))
    assert torch.equal(dec[:, 0], _nibble_perm(dec[:, 3]))
    assert torch.equal(dec[:, 1], _nibble_perm(dec[:, 4]))
    assert torch.equal(dec[:, 2], _nibble_perm(dec[:, 5]))
    flags = dec[:, 1:3]
    want_cnt = sum(((flags >> (4 * j)) & 1).sum(1) for j in range(8))
    assert torch.equal(cnt.long(), want_cnt)
    assert int(dec[:, 1].ne(0).sum()) > 0 and int(dec[:, 2].ne(0).sum()) > 0


@pytest.mark.gpu
def test_word_helpers_asm_equals_plain(device: str) -> None:
    # the inline-PTX versions (compiled kernels) give exactly the plain versions' values
    _, nib_a, dec_a, cnt_a = _probe(device, asm=True)
    _, nib_p, dec_p, cnt_p = _probe(device, asm=False)
    assert torch.equal(nib_a.view(torch.int16), nib_p.view(torch.int16))
    assert torch.equal(dec_a, dec_p) and torch.equal(cnt_a, cnt_p)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["int4", "int4-hamming84", "int4-hamming", "int4-hamming84-interp"])
def test_asm_and_plain_kernels_agree(mode: str, device: str) -> None:
    # the whole packed-word kernel with and without inline PTX, both against the reference
    cache = _cache(mode, [70, 3, 129], device, head_dim=128, ber=0.02 if "interp" in mode else 0.005, seed=9,
                   num_blocks=64)  # fmt: skip
    for asm in (True, False):
        _check(cache, hq=8, dtype=torch.float16, num_splits=2, block_n=64, asm=asm)


def test_asm_rejected_in_interpreter(device: str) -> None:
    if device == "cuda":
        pytest.skip("compiled kernels run the PTX")
    from kernels.paged_attention import paged_decode_attention

    cache = _cache("int4", [3], device, head_dim=64)
    q = torch.randn(1, 4, 64, dtype=torch.float16)
    args = (cache.k_data[0], cache.k_scale[0], cache.v_data[0], cache.v_scale[0], cache.block_tables, cache.lengths)
    with pytest.raises(ValueError, match="asm"):
        paged_decode_attention(q, *args, sm_scale=1.0, codec=None, max_len=3, asm=True)


@pytest.mark.parametrize("lazy, trans", [(True, True), (False, False)])
def test_hamming84_few_errors_clean_and_dirty_tiles(lazy: bool, trans: bool, device: str) -> None:
    # a handful of flips: most tiles are clean (lazy: syndromes only), a few are corrected
    cache = _cache("int4-hamming84", [160, 37], device, head_dim=64, ber=2e-5, seed=12, num_blocks=56)
    _, _, st = cache.read(0)
    assert 0 < int((st > 0).sum()) < 20, "a few corrected codewords, most tiles clean"
    from kernels.paged_attention import paged_decode_attention

    c = cache.config
    q = torch.randn(2, 4, 64, generator=torch.Generator().manual_seed(3)).to(torch.float16).to(device)
    cnt_ref = torch.zeros(2, dtype=torch.int64, device=device)
    ref = cache.attend(0, q, backend="torch", counters=cnt_ref)
    cnt = torch.zeros(2, dtype=torch.int64, device=device)
    args = (cache.k_data[0], cache.k_scale[0], cache.v_data[0], cache.v_scale[0], cache.block_tables, cache.lengths)
    out = paged_decode_attention(q, *args, sm_scale=64**-0.5, codec=c.codec, counters=cnt, num_splits=None,
                                 max_len=160, block_n=16, lazy=lazy, trans=trans)  # fmt: skip
    assert_close_verbose(out, ref, torch.float16)
    assert cnt.tolist() == cnt_ref.tolist()
