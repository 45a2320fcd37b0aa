"""Error-correcting codes for INT4 codes: Hamming(7,4), extended Hamming(8,4) SECDED, extended Golay(24,12).

This is the plain-torch reference (and test oracle) of the codec contract in docs/design.md:

    codec = get_codec("hamming84", backend="torch")  # hamming74 | hamming84 | golay2412 ("golay")
    cw = codec.encode(q)           # q: uint8 INT4 codes [..., n], n a multiple of data_symbols
    q2, status = codec.decode(cw)  # status per codeword: 0 clean, 1 corrected, 2 detected-uncorrectable

Bit layout of one logical codeword (defined once; ``kernels.codecs`` mirrors it bit for bit):

- Hamming(7,4), uint8: bits 0-3 the data nibble d0..d3 (the INT4 code itself), bits 4-6 the
  parities p0 = d0^d1^d3, p1 = d0^d2^d3, p2 = d1^d2^d3; bit 7 is not part of the code and ignored.
- Hamming(8,4), uint8: the Hamming(7,4) word plus bit 7 = parity of bits 0-6 (even overall parity).
- Golay(24,12), int32: bits 0-11 the three codes q[3c] | q[3c+1] << 4 | q[3c+2] << 8, bits 12-23 the
  parity d*B over GF(2) (B the symmetric 12x12 matrix below, B*B = I); bits 24-31 ignored.

Decoding failure (status 2) returns the received data bits unchanged (no correction is attempted);
Hamming(7,4) never reports status 2 (it cannot detect), and only ``codeword_bits`` low bits of a
codeword are read, so garbage in the unused high bits does not change the result.
Golay decodes by syndrome table (4096 entries, built here by enumerating all 2325 error patterns of
weight <= 3); ``golay_decode_algebraic`` is the classic algebraic decoder, kept as an independent
cross-check of the table and as the baseline in docs/codecs.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

CODEC_NAMES = ("hamming74", "hamming84", "golay2412")
ALIASES = {"golay": "golay2412", "hamming": "hamming74"}
BACKENDS = ("torch", "triton")
STATUS_CLEAN, STATUS_CORRECTED, STATUS_DETECTED = 0, 1, 2

# Rows of B for the extended Golay code [I | B] (row k = parity contributed by data bit k).
GOLAY_B_ROWS = (0xA3B, 0xD1D, 0xE8E, 0xB47, 0xDA3, 0xED1, 0xF68, 0xBB4, 0x9DA, 0x8ED, 0xC76, 0x7FF)
# Hamming syndrome (3 bits) -> data bit to flip (0 = none): s=3 d0, s=5 d1, s=6 d2, s=7 d3.
_H_FLIP = (0, 0, 0, 1, 0, 2, 4, 8)


def canonical_name(name: str) -> str:
    """Registry name of a codec (accepts the aliases "golay", "hamming"); ValueError lists the choices."""
    if not isinstance(name, str):
        raise TypeError(f"codec name must be a str, got {type(name).__name__}")
    full = ALIASES.get(name, name)
    if full not in CODEC_NAMES:
        raise ValueError(f"unknown codec {name!r}; choose one of: {', '.join(CODEC_NAMES)} (aliases: golay, hamming)")
    return full


def _bit(x: torch.Tensor, k: int) -> torch.Tensor:
    return (x >> k) & 1


def hamming_parity(d: torch.Tensor) -> torch.Tensor:
    """The three Hamming parity bits (p0 | p1 << 1 | p2 << 2) of data nibbles ``d`` (int32)."""
    d0, d1, d2, d3 = _bit(d, 0), _bit(d, 1), _bit(d, 2), _bit(d, 3)
    return (d0 ^ d1 ^ d3) | ((d0 ^ d2 ^ d3) << 1) | ((d1 ^ d2 ^ d3) << 2)


def _parity8(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 4)
    x = x ^ (x >> 2)
    return (x ^ (x >> 1)) & 1


def golay_parity(d: torch.Tensor) -> torch.Tensor:
    """12 parity bits d*B of 12-bit data words ``d`` (int32 tensor)."""
    p = torch.zeros_like(d)
    for k, row in enumerate(GOLAY_B_ROWS):
        p = p ^ (_bit(d, k) * row)
    return p


@cache
def _golay_table_cpu() -> torch.Tensor:
    """Syndrome -> (data correction | status << 12), int32 [4096], by enumerating error patterns.

    Every error of weight <= 3 has its own syndrome (d = 8 >= 7); the 2325 such syndromes get
    status 1 (0 for the zero syndrome) and the data part of their error; the other 1771 syndromes
    are cosets of weight-4 leaders: status 2, no correction.
    """
    bits = torch.arange(24)
    pats = [torch.zeros(1, dtype=torch.int64)]
    single = (1 << bits).to(torch.int64)
    pats.append(single)
    i, j = torch.triu_indices(24, 24, offset=1)
    pats.append(single[i] | single[j])
    a, b, c = torch.combinations(bits, 3).unbind(1)
    pats.append(single[a] | single[b] | single[c])
    e = torch.cat(pats).to(torch.int32)  # [2325]
    syn = golay_parity(e & 0xFFF) ^ (e >> 12)
    table = torch.full((4096,), STATUS_DETECTED << 12, dtype=torch.int32)
    status = torch.where(e == 0, STATUS_CLEAN, STATUS_CORRECTED).to(torch.int32)
    table[syn.long()] = (e & 0xFFF) | (status << 12)
    if int((table >> 12 == STATUS_CORRECTED).sum()) != 2324:  # distinct syndromes, a property of the code
        raise RuntimeError("Golay syndrome table is not injective on weight <= 3 patterns")
    return table


def golay_syndrome_table(device: str | torch.device = "cpu") -> torch.Tensor:
    """The 4096-entry syndrome table (int32: data correction in bits 0-11, status in bits 12-13)."""
    return _golay_table_cpu().to(device)


def _weight12(x: torch.Tensor) -> torch.Tensor:
    return sum(_bit(x, k) for k in range(12))


def golay_decode_algebraic(cw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Algebraic decode of Golay words (the textbook 4-step rule with s and s*B); returns (data12, status).

    Same results as the table decoder on every input (checked exhaustively in the tests); kept
    as the independent reference and the alternative measured in docs/codecs.md.
    """
    cw = cw.to(torch.int32) & 0xFFFFFF
    d, p = cw & 0xFFF, cw >> 12
    s = golay_parity(d) ^ p  # error e = (e_d, e_p) has s = e_d*B ^ e_p
    rows = torch.tensor(GOLAY_B_ROWS, dtype=torch.int32, device=cw.device)
    unit = 1 << torch.arange(12, dtype=torch.int32, device=cw.device)
    s2 = golay_parity(s)  # = e_p*B ^ e_d, since B*B = I
    e_d = torch.full_like(s, -1)  # -1: not yet decided
    # step 4 first, then overwrite with higher-priority steps (1 wins); ties are impossible for wt <= 3
    w2 = _weight12(s2[..., None] ^ rows)  # [..., 12]
    hit = w2 <= 2
    e_d = torch.where(hit.any(-1), ((s2[..., None] ^ rows) * hit).amax(-1), e_d)
    e_d = torch.where(_weight12(s2) <= 3, s2, e_d)
    w1 = _weight12(s[..., None] ^ rows)
    hit1 = w1 <= 2
    e_d = torch.where(hit1.any(-1), (unit * hit1).amax(-1), e_d)
    e_d = torch.where(_weight12(s) <= 3, torch.zeros_like(s), e_d)
    status = torch.where(e_d < 0, STATUS_DETECTED, torch.where(s == 0, STATUS_CLEAN, STATUS_CORRECTED))
    data = torch.where(e_d < 0, d, d ^ e_d)
    return data, status.to(torch.uint8)


def _check_codes(q: torch.Tensor, data_symbols: int) -> None:
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if q.dtype != torch.uint8:
        raise TypeError(f"q.dtype={q.dtype} must be torch.uint8 (INT4 codes 0..15)")
    if q.dim() == 0 or q.shape[-1] % data_symbols != 0:
        raise ValueError(f"q.shape={tuple(q.shape)}: the last dim must be a multiple of data_symbols={data_symbols}")


@dataclass(frozen=True)
class Codec:
    """One code with one backend; ``encode``/``decode`` follow the codec contract (module docstring)."""

    name: str
    backend: str
    codeword_bits: int
    data_symbols: int

    @property
    def rate(self) -> float:
        """Stored bits per INT4 value."""
        return self.codeword_bits / self.data_symbols

    def encode(self, q: torch.Tensor) -> torch.Tensor:
        """INT4 codes ``q [..., n]`` (uint8, low nibble used) -> codewords ``[..., n / data_symbols]``."""
        _check_codes(q, self.data_symbols)
        if self.backend == "triton":
            from kernels.codecs import encode_triton

            return encode_triton(self.name, q)
        qi = q.to(torch.int32) & 15
        if self.name == "golay2412":
            qi = qi.reshape(*q.shape[:-1], q.shape[-1] // 3, 3)  # [..., m, 3]
            d = qi[..., 0] | (qi[..., 1] << 4) | (qi[..., 2] << 8)
            return d | (golay_parity(d) << 12)
        cw = qi | (hamming_parity(qi) << 4)
        if self.name == "hamming84":
            cw = cw | (_parity8(cw) << 7)
        return cw.to(torch.uint8)

    def decode(self, cw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codewords ``[..., m]`` -> (codes uint8 ``[..., m * data_symbols]``, status uint8 ``[..., m]``)."""
        want = torch.int32 if self.name == "golay2412" else torch.uint8
        if not isinstance(cw, torch.Tensor) or cw.dtype != want:
            got = cw.dtype if isinstance(cw, torch.Tensor) else type(cw).__name__
            raise TypeError(f"{self.name} codewords must be a {want} tensor, got {got}")
        if cw.dim() == 0:
            raise ValueError("codewords must have at least one dim")
        if self.backend == "triton":
            from kernels.codecs import decode_triton

            return decode_triton(self.name, cw)
        if self.name == "golay2412":
            c = cw & 0xFFFFFF
            d = c & 0xFFF
            entry = golay_syndrome_table(cw.device)[(golay_parity(d) ^ (c >> 12)).long()]
            status = entry >> 12
            d = torch.where(status == STATUS_DETECTED, d, d ^ (entry & 0xFFF))
            q = torch.stack([d & 15, (d >> 4) & 15, d >> 8], dim=-1).reshape(*cw.shape[:-1], -1)
            return q.to(torch.uint8), status.to(torch.uint8)
        c = cw.to(torch.int32)
        d = c & 15
        s = hamming_parity(d) ^ ((c >> 4) & 7)
        flip = torch.tensor(_H_FLIP, dtype=torch.int32, device=cw.device)[s.long()]
        if self.name == "hamming74":
            return (d ^ flip).to(torch.uint8), (s != 0).to(torch.uint8)
        odd = _parity8(c & 0xFF) == 1  # a single error (anywhere, bit 7 included) flips the overall parity
        status = torch.where(odd, STATUS_CORRECTED, torch.where(s != 0, STATUS_DETECTED, STATUS_CLEAN))
        q = torch.where(odd, d ^ flip, d)
        return q.to(torch.uint8), status.to(torch.uint8)

    @staticmethod
    def counts(status: torch.Tensor) -> dict[str, int]:
        """Number of corrected and detected-uncorrectable codewords in ``status``."""
        return {
            "corrected": int((status == STATUS_CORRECTED).sum()),
            "detected": int((status == STATUS_DETECTED).sum()),
        }


_SPECS = {"hamming74": (7, 1), "hamming84": (8, 1), "golay2412": (24, 3)}


def get_codec(name: str, backend: str = "torch") -> Codec:
    """The codec ``name`` (hamming74 | hamming84 | golay2412, alias golay) on ``backend`` (torch | triton)."""
    full = canonical_name(name)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    bits, symbols = _SPECS[full]
    return Codec(name=full, backend=backend, codeword_bits=bits, data_symbols=symbols)
