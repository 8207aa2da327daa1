"""How one tensor is quantized: :class:`QuantSpec` (as PT2E's ``QuantizationSpec``).

A spec says everything a quantizer module and the ONNX export need to know about a tensor's
integer grid except the scale and zero point values, which calibration picks:

- ``dtype``: the 8-bit container the codes are stored in (``int8`` weights, ``uint8``
  activations: ONNX ``QuantizeLinear``'s output type);
- ``bits``: how many of the container's bits the codes use (2..8). Codes narrower than the
  container are clipped to ``[qmin, qmax]`` (QDQ export writes a ``Clip`` after the Q);
- ``symmetric``: the grid is symmetric around 0 (zero point 0, signed codes);
- ``narrow_range``: signed codes drop the most negative value, ``qmin = −qmax``
  (e.g. 4-bit → [−7, 7]), so ``−w`` and ``w`` get opposite codes;
- ``axis``: the per-channel axis (one scale per slice of that dimension), or None for one
  scale for the whole tensor;
- ``zero_point``: the zero-point rule: ``"zero"`` (fixed at 0: symmetric weights, and unsigned
  tensors known to be ≥ 0, after ReLU/ReLU6) or ``"shifted"`` (an integer in [qmin, qmax]
  chosen from the range so that 0 is exactly representable: asymmetric).

torch-free: the scheme (:mod:`.scheme`) and the quantizers (:mod:`.quantizers`) both read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..core.errors import ConfigError

#: container dtype → (signed codes, container width in bits)
DTYPES: dict[str, tuple[bool, int]] = {"int8": (True, 8), "uint8": (False, 8)}

#: zero-point rule → what it means
ZERO_POINT_RULES: dict[str, str] = {
    "zero": "fixed at 0 (symmetric grids; tensors known to be >= 0)",
    "shifted": "an integer chosen from the range so that 0 is exactly representable (asymmetric)",
}

#: narrowest code width a spec may ask for (1-bit narrow-range codes would all be 0)
MIN_SPEC_BITS = 2

_HINT = "see toolchain/quant/spec.py for what a QuantSpec may hold"


@dataclass(frozen=True)
class QuantSpec:
    """The integer grid of one tensor (everything but the scale and zero point values).

    Attributes:
        dtype: the code container, ``"int8"`` or ``"uint8"``.
        bits: code width, 2..8 (the container width at most).
        symmetric: zero point fixed at 0 on signed codes.
        narrow_range: signed codes in [−qmax, qmax] instead of [−qmax − 1, qmax].
        axis: per-channel axis (≥ 0) of the quantized tensor, or None for per-tensor.
        zero_point: ``"zero"`` or ``"shifted"`` (:data:`ZERO_POINT_RULES`).

    Raises:
        ConfigError: an unknown dtype or zero-point rule, a width outside 2..container width,
            a negative or non-integer axis, ``narrow_range`` or ``symmetric`` on unsigned codes,
            or ``symmetric`` with a shifted zero point.
    """

    dtype: str
    bits: int
    symmetric: bool = False
    narrow_range: bool = False
    axis: int | None = None
    zero_point: str = "zero"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown quantization dtype {self.dtype!r}", f"choose one of {', '.join(DTYPES)}")
        if self.zero_point not in ZERO_POINT_RULES:
            raise ConfigError(f"unknown zero-point rule {self.zero_point!r}",
                              f"choose one of {', '.join(ZERO_POINT_RULES)}")
        width = DTYPES[self.dtype][1]
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not MIN_SPEC_BITS <= self.bits <= width:
            raise ConfigError(f"a {self.dtype} spec needs bits in {MIN_SPEC_BITS}..{width}, got {self.bits!r}", _HINT)
        if self.axis is not None and (isinstance(self.axis, bool) or not isinstance(self.axis, int) or self.axis < 0):
            raise ConfigError(f"a spec's per-channel axis must be an integer >= 0 or None, got {self.axis!r}", _HINT)
        if not self.signed and (self.narrow_range or self.symmetric):
            raise ConfigError(f"narrow_range and symmetric need signed codes, not {self.dtype}",
                              "use dtype 'int8', or an unsigned grid with zero_point 'zero' or 'shifted'")
        if self.symmetric and self.zero_point != "zero":
            raise ConfigError("a symmetric spec has zero point 0, not a shifted one", _HINT)

    # derived ---------------------------------------------------------------------------
    @property
    def signed(self) -> bool:
        """Whether the codes are signed (the container is ``int8``)."""
        return DTYPES[self.dtype][0]

    @property
    def qmax(self) -> int:
        """Largest code: ``2**(bits−1) − 1`` signed, ``2**bits − 1`` unsigned."""
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    @property
    def qmin(self) -> int:
        """Smallest code: ``−qmax`` narrow range, ``−2**(bits−1)`` signed, 0 unsigned."""
        if not self.signed:
            return 0
        return -self.qmax if self.narrow_range else -(2 ** (self.bits - 1))

    @property
    def per_channel(self) -> bool:
        """Whether there is one scale per slice of :attr:`axis` (else one per tensor)."""
        return self.axis is not None

    @property
    def fixed_zero_point(self) -> bool:
        """Whether the zero point is 0 whatever the range (rule ``"zero"``)."""
        return self.zero_point == "zero"

    @property
    def kind(self) -> tuple[str, bool, str]:
        """``(dtype, per_channel, zero_point)``: what picks the quantizer class
        (:func:`toolchain.quant.quantizers.quantizer_from_spec`)."""
        return self.dtype, self.per_channel, self.zero_point

    def with_bits(self, bits: int) -> "QuantSpec":
        """The same grid at another width (validated again)."""
        return replace(self, bits=int(bits))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantSpec":
        """Inverse of :meth:`to_dict`. Raises ConfigError on unknown keys or bad values."""
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown QuantSpec key(s) {', '.join(map(repr, unknown))}",
                              f"a spec has {', '.join(cls.__dataclass_fields__)}")
        return cls(**d)


def weight_spec(bits: int, axis: int = 0) -> QuantSpec:
    """Signed, symmetric, narrow-range codes with one scale per output channel (dim ``axis``)."""
    return QuantSpec("int8", bits, symmetric=True, narrow_range=True, axis=axis)


def unsigned_act_spec(bits: int) -> QuantSpec:
    """Unsigned per-tensor codes with zero point 0, for tensors known to be ≥ 0 (after ReLU/ReLU6)."""
    return QuantSpec("uint8", bits, zero_point="zero")


def shifted_act_spec(bits: int) -> QuantSpec:
    """Unsigned per-tensor codes with a shifted (integer) zero point: asymmetric, any sign."""
    return QuantSpec("uint8", bits, zero_point="shifted")
