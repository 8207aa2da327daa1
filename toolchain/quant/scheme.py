"""The deploy quantization scheme: which bit widths go where.

See ARCHITECTURE.md, "The quantized model": weights per-output-channel symmetric
narrow range, activations per-tensor (unsigned with zero_point 0 after
ReLU/ReLU6, asymmetric otherwise), every input of Conv/Linear/Add/Concat/Pool
quantized including the network input, int32 bias, half-to-even rounding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ConfigError
from ..targets import DEFAULT_TARGET, get_target

MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class QuantScheme:
    """Bit widths of a quantized model.

    Attributes:
        wbits: weight bit width of inner layers (2..8).
        abits: activation bit width of inner tensors (2..8).
        first_last_bits: bit width of the first and last Conv/Linear layers' weights and
            of their input activations (the network input included); the logits stay float.
            Defaults to 8, the convention of the zero-shot literature.
        target: deployment target (:mod:`toolchain.targets`): ``portable`` (default) narrows
            the weights of any layer whose codes could saturate an int16 pair sum on
            AVX2-only x86 CPUs; ``x86-vnni`` and ``arm64`` keep full 8-bit ranges.

    Raises:
        ConfigError: a bit width outside 2..8, or an unknown target.
    """

    wbits: int = 8
    abits: int = 8
    first_last_bits: int = 8
    target: str = DEFAULT_TARGET

    def __post_init__(self):
        for name in ("wbits", "abits", "first_last_bits"):
            v = getattr(self, name)
            if not isinstance(v, int) or not MIN_BITS <= v <= MAX_BITS:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be an integer in {MIN_BITS}..{MAX_BITS}, got {v!r}",
                    f"8-bit containers hold every width from {MIN_BITS} to {MAX_BITS}; e.g. --bits 8, 6, 4, 3 or 2",
                )
        get_target(self.target)

    @property
    def fused_add(self) -> bool:
        """Whether residual adds may run as QLinearAdd on this scheme's target
        (:attr:`toolchain.targets.Target.fused_add`; ``portable``: no, they run in float)."""
        return get_target(self.target).fused_add

    def layer_bits(self, weight_bits: int, input_act_bits: int, *, depthwise: bool = False) -> tuple[int, int]:
        """(weight bits, input activation bits) a layer gets on this scheme's target, given the
        widths its role asks for. On an int16-pair-safe target (``portable``) the pair satisfies
        ``2 · (2**a − 1) · (2**(w−1) − 1) ≤ 32,767`` (8-bit weights on 8-bit inputs → 7-bit
        weights); elsewhere, and for a depthwise convolution (``depthwise``: its kernel widens every
        product to int32), it is returned unchanged (:meth:`toolchain.targets.Target.layer_bits`).
        """
        return get_target(self.target).layer_bits(weight_bits, input_act_bits, depthwise=depthwise)

    @classmethod
    def from_bits(cls, bits: int | None = None, wbits: int | None = None,
                  abits: int | None = None, first_last_bits: int | None = 8,
                  target: str | None = None) -> "QuantScheme":
        """Resolve the CLI's ``--bits/--wbits/--abits/--first-last-bits/--target``: specific flags win.

        Raises:
            ConfigError: naming the flag the user gave (``--bits`` before the widths it sets).
        """
        for flag, v in (("bits", bits), ("wbits", wbits), ("abits", abits), ("first_last_bits", first_last_bits)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not MIN_BITS <= v <= MAX_BITS):
                raise ConfigError(f"--{flag.replace('_', '-')} must be an integer in {MIN_BITS}..{MAX_BITS}, got {v!r}",
                                  f"8-bit containers hold every width from {MIN_BITS} to {MAX_BITS}; "
                                  "e.g. --bits 8, 6, 4, 3 or 2")
        b = 8 if bits is None else bits
        w = b if wbits is None else wbits
        a = b if abits is None else abits
        fl = 8 if first_last_bits is None else first_last_bits
        return cls(wbits=w, abits=a, first_last_bits=fl, target=target or DEFAULT_TARGET)

    @property
    def tag(self) -> str:
        """Short name such as ``w4a4`` (``-fl8`` suffix when first/last differ)."""
        t = f"w{self.wbits}a{self.abits}"
        if self.first_last_bits not in (self.wbits,) or self.first_last_bits != self.abits:
            t += f"-fl{self.first_last_bits}"
        return t

    def to_dict(self) -> dict:
        return asdict(self)
