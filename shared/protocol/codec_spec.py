"""The soft-label codec's spec: ``f32``, ``f16`` or ``q<bits>[+delta]``, then ``+zstd`` or ``+ans``.

:class:`CodecSpec` is the parsed, validated form of the string that goes on the wire in
every soft-label payload (see :mod:`shared.protocol.softlabels`), with the error bound
each codec guarantees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["CodecSpec"]

_GRAMMAR = (
    "SPEC := (f32 | f16 | q<2..8>[+delta]) [+zstd[<level 1..22>]], or q<2..8>[+delta]+ans, "
    "e.g. q6+delta+zstd, q8+ans"
)
_SPEC_PATTERN = re.compile(r"(f32|f16|q([0-9]))(\+delta)?(\+zstd([0-9]{1,2})?|\+ans)?")
_INPUT_SLACK = 1e-6  # error bounds hold for inputs whose rows sum to 1 within this
_DEFAULT_LEVEL = 3
_F32_ROUNDING = 1 / 2**24  # largest error of rounding a value in [0, 1] to float32


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """How a soft-label matrix is coded; its string form goes on the wire.

    The grammar: ``(f32 | f16 | q<2..8>[+delta]) [+zstd[<level 1..22>]]``, or
    ``q<2..8>[+delta]+ans``.

    Attributes:
        kind: ``f32`` (exact), ``f16``, or ``quant`` (``bits``-bit simplex codes).
        bits: code width 2..8 for quant; 8 (unused) otherwise.
        delta: quant only: code q - q_ref against a reference both sides hold.
        entropy: ``zstd`` compresses the data bytes; ``ans`` entropy-codes the quant
            symbols under per-class models (:mod:`shared.protocol.entropy`); ``none``
            leaves them.
        level: zstd level 1..22 (encoder only; 3 unless ``entropy`` is zstd).

    Raises:
        ValueError: for any combination outside the grammar.
    """

    kind: Literal["f32", "f16", "quant"]
    bits: int = 8
    delta: bool = False
    entropy: Literal["none", "zstd", "ans"] = "none"
    level: int = _DEFAULT_LEVEL

    def __post_init__(self) -> None:
        quant = self.kind == "quant"
        if self.kind not in ("f32", "f16", "quant") or self.entropy not in ("none", "zstd", "ans"):
            raise ValueError(f"unknown kind or entropy coder; {_GRAMMAR}")
        if self.entropy == "ans" and not quant:
            raise ValueError(f"ans codes quant symbols only; {_GRAMMAR}")
        if (quant and not 2 <= self.bits <= 8) or (not quant and (self.bits != 8 or self.delta)):
            raise ValueError(f"bits 2..8 and delta apply to quant only; {_GRAMMAR}")
        zstd = self.entropy == "zstd"
        if (zstd and not 1 <= self.level <= 22) or (not zstd and self.level != _DEFAULT_LEVEL):
            raise ValueError(f"zstd level must lie in 1..22; {_GRAMMAR}")

    @classmethod
    def parse(cls, text: str) -> CodecSpec:
        """Parse ``f32``, ``q4``, ``q8+delta``, ``q6+delta+zstd``, ``f16+zstd19``, ``q8+ans``.

        Raises:
            ValueError: when ``text`` does not follow the grammar (the message quotes it).
        """
        match = _SPEC_PATTERN.fullmatch(text)
        if match is None:
            raise ValueError(f"bad codec spec {text!r}; {_GRAMMAR}")
        base, bits, delta, coder, level = match.groups()
        entropy: Literal["none", "zstd", "ans"] = (
            "none" if coder is None else "ans" if coder == "+ans" else "zstd"
        )
        level_value = int(level) if level else _DEFAULT_LEVEL
        if bits is None:
            kind: Literal["f32", "f16"] = "f32" if base == "f32" else "f16"
            return cls(kind, delta=bool(delta), entropy=entropy, level=level_value)
        return cls("quant", int(bits), bool(delta), entropy, level_value)

    def __str__(self) -> str:
        text = f"q{self.bits}" if self.kind == "quant" else self.kind
        text += "+delta" if self.delta else ""
        if self.entropy == "zstd":
            text += "+zstd" + ("" if self.level == _DEFAULT_LEVEL else str(self.level))
        elif self.entropy == "ans":
            text += "+ans"
        return text

    def max_abs_error(self, num_classes: int) -> float:
        """Bound on |decoded - input| per entry, for input rows summing to 1 within 1e-6.

        f32: 1e-6; exactly 0 when the float64 row sum is within 1e-6 of 1.
        f16: 2**-12 + 1e-6 (half-precision rounding of every entry, round to nearest;
        rows are not renormalized, so they sum to 1 within 2**-11 + C 2**-25 + 1e-6).
        quant: 1/L + 2**-24 + 1e-6 with L = 2**bits - 1: largest-remainder rounding moves
        every scaled entry by less than one code; 2**-24 is float32 output rounding.

        Args:
            num_classes: C, the row length (>= 1).

        Raises:
            ValueError: when num_classes < 1.
        """
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if self.kind == "f32":
            return _INPUT_SLACK
        if self.kind == "f16":
            return 1 / 2**12 + _INPUT_SLACK
        return 1 / ((1 << self.bits) - 1) + _F32_ROUNDING + _INPUT_SLACK
