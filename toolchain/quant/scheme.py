"""The deploy quantization scheme: which grid (:class:`.spec.QuantSpec`) each tensor role gets.

See ARCHITECTURE.md, "The quantized model": weights per-output-channel symmetric
narrow range, activations per-tensor (unsigned with zero_point 0 after
ReLU/ReLU6, asymmetric otherwise), every input of Conv/Linear/Add/Concat/Pool
quantized including the network input, int32 bias, half-to-even rounding.

As PT2E's ``QuantizationConfig``, a :class:`QuantScheme` maps tensor *roles* (:data:`ROLES`) to
specs, and applies its target's rule (:mod:`toolchain.targets`) to the specs of each layer
(:meth:`QuantScheme.layer_specs`). The rewrite (:mod:`.rewrite`) only finds each tensor's role in
the graph and asks; a new target, per-layer widths or a new role change this module, not the
rewrite. The scheme's own fields are four values (three widths and a target) and, for mixed
precision, per-layer weight widths (``layer_wbits``): they key caches and the model card, so the
specs are derived, never stored. torch-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Mapping

from ..core.errors import ConfigError
from ..targets import DEFAULT_TARGET, get_target
from .protocol import DEFAULT_PROTOCOL, Protocol, get_protocol
from .spec import QuantSpec, shifted_act_spec, unsigned_act_spec, weight_spec

MIN_BITS, MAX_BITS = 2, 8

#: tensor role → (what it is, its spec on a scheme). "Edge" tensors are the inputs of the first
#: and last Conv/Linear layers and the tensors the graph output reads; they get ``first_last_bits``.
#: "Unread" tensors are inner activations no Conv/Linear reads (a residual branch's conv output
#: before its Add); they get ``residual_bits`` (``abits`` unless set).
ROLES: dict[str, tuple[str, Callable[["QuantScheme"], QuantSpec]]] = {
    "input": ("the network input (any sign)", lambda s: shifted_act_spec(s.first_last_bits)),
    "act.unsigned": ("an inner activation known to be >= 0 (after ReLU/ReLU6)",
                     lambda s: unsigned_act_spec(s.abits)),
    "act.signed": ("an inner activation of any sign (residual branches, hardswish, ...)",
                   lambda s: shifted_act_spec(s.abits)),
    "edge_act.unsigned": ("an edge activation known to be >= 0", lambda s: unsigned_act_spec(s.first_last_bits)),
    "edge_act.signed": ("an edge activation of any sign", lambda s: shifted_act_spec(s.first_last_bits)),
    "unread_act.unsigned": ("an inner activation >= 0 that no Conv/Linear reads",
                            lambda s: unsigned_act_spec(s.unread_bits)),
    "unread_act.signed": ("an inner activation of any sign that no Conv/Linear reads (a residual "
                          "branch's output before its Add)", lambda s: shifted_act_spec(s.unread_bits)),
    "weight": ("the weights of an inner Conv/Linear layer", lambda s: weight_spec(s.wbits)),
    "edge_weight": ("the weights of the first or last Conv/Linear layer", lambda s: weight_spec(s.first_last_bits)),
}


#: under a uniform-bits protocol (``paper``) each edge role reads as its inner role
UNIFORM_ROLE: dict[str, str] = {"edge_weight": "weight", "edge_act.unsigned": "act.unsigned",
                                "edge_act.signed": "act.signed", "input": "act.signed",
                                "unread_act.unsigned": "act.unsigned", "unread_act.signed": "act.signed"}

#: a layer's position (``QuantLayer.role``: no Conv/Linear before it / after it) → its weight role
WEIGHT_ROLE_OF_LAYER: dict[str, str] = {"": "weight", "first": "edge_weight", "last": "edge_weight",
                                        "first+last": "edge_weight"}


def activation_role(*, unsigned: bool, edge: bool, network_input: bool = False, unread: bool = False) -> str:
    """The role of an activation: ``"input"`` for the network input, else ``<kind>.<sign>`` — kind
    ``edge_act`` (an edge tensor keeps it even when ``unread``), ``unread_act`` (no Conv/Linear reads
    the tensor) or ``act``; sign ``unsigned`` (known >= 0) or ``signed``."""
    if network_input:
        return "input"
    kind = "edge_act" if edge else "unread_act" if unread else "act"
    return f"{kind}.{'unsigned' if unsigned else 'signed'}"


def weight_role(layer_role: str) -> str:
    """The weight role of a layer whose position is ``layer_role`` ("", "first", "last", "first+last").

    Raises:
        ConfigError: an unknown position.
    """
    try:
        return WEIGHT_ROLE_OF_LAYER[layer_role]
    except KeyError:
        raise ConfigError(f"unknown layer position {layer_role!r}",
                          f"one of {', '.join(map(repr, WEIGHT_ROLE_OF_LAYER))}") from None


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
        layer_wbits: per-layer weight widths (mixed precision, :mod:`toolchain.methods.sensitivity`):
            ``(layer path, bits)`` pairs, the path as in
            :meth:`~toolchain.quant.model.QuantizedModel.layers` (``"layer1.0.conv1"``). A listed
            layer's weights get that width instead of their role's (``wbits`` / ``first_last_bits``),
            and then the target's rule as any layer's (on ``portable`` an 8-bit layer on 8-bit inputs
            still gets 7-bit codes). Activations keep ``abits`` / ``first_last_bits``. Given as pairs
            or a mapping, stored sorted by path; empty (the default) for a uniform scheme, and then
            left out of :meth:`to_dict`, so uniform schemes key caches as before.
        protocol: ``deploy`` (default; the exportable integer model) or ``paper`` (the zero-shot
            papers' protocol, simulation only: :mod:`.protocol`). Under ``paper`` every layer and
            activation gets ``wbits`` / ``abits`` (``first_last_bits`` is ignored) and the target's
            rule does not apply (nothing is exported). Left out of :meth:`to_dict` when ``deploy``.
        residual_bits: bit width of inner activations that no Conv/Linear reads — a residual
            branch's conv output before its Add (and a Concat/Pool input read only there). None
            (the default): ``abits``, every inner activation alike. 8 keeps those tensors on the
            8-bit grid QLinearConv writes anyway (no cost on onnxruntime) while every Conv/Linear
            still reads ``abits`` codes, the reading of "A4" in BRECQ and GENIE, whose fake-quant
            models quantize layer inputs only and leave the branch output in float. Left out of
            :meth:`to_dict` when None.

    Raises:
        ConfigError: a bit width outside 2..8, an unknown target or protocol, a malformed or
            repeated ``layer_wbits`` entry, or per-layer widths under the ``paper`` protocol.
    """

    wbits: int = 8
    abits: int = 8
    first_last_bits: int = 8
    target: str = DEFAULT_TARGET
    layer_wbits: tuple[tuple[str, int], ...] = ()
    protocol: str = DEFAULT_PROTOCOL
    residual_bits: int | None = None

    def __post_init__(self):
        for name in ("wbits", "abits", "first_last_bits", "residual_bits"):
            v = getattr(self, name)
            if v is None and name == "residual_bits":
                continue
            if not isinstance(v, int) or not MIN_BITS <= v <= MAX_BITS:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be an integer in {MIN_BITS}..{MAX_BITS}, got {v!r}",
                    f"8-bit containers hold every width from {MIN_BITS} to {MAX_BITS}; e.g. --bits 8, 6, 4, 3 or 2",
                )
        get_target(self.target)
        get_protocol(self.protocol)
        object.__setattr__(self, "layer_wbits", _layer_widths(self.layer_wbits))
        if self.residual_bits is not None and self.rules.uniform_bits:
            raise ConfigError(f"--residual-bits needs the deploy scheme, not {self.protocol!r}",
                              "the paper protocol quantizes activations after ReLU only; drop one of the two")
        if self.layer_wbits and not self.rules.exportable:
            raise ConfigError(f"per-layer weight widths (--size-budget) need the deploy scheme, not {self.protocol!r}",
                              "mixed precision sizes an exported file; drop --scheme paper or --size-budget")

    @property
    def unread_bits(self) -> int:
        """The width of activations no Conv/Linear reads: :attr:`residual_bits`, else ``abits``."""
        return self.abits if self.residual_bits is None else self.residual_bits

    @property
    def rules(self) -> Protocol:
        """The :class:`.protocol.Protocol` this scheme follows (raises ConfigError if unknown)."""
        return get_protocol(self.protocol)

    def spec(self, role: str) -> QuantSpec:
        """The spec of a tensor with this role (:data:`ROLES`) before any per-layer rule.

        Raises:
            ConfigError: an unknown role.
        """
        if self.rules.uniform_bits:  # the paper protocol: no edge tensor gets other widths
            role = UNIFORM_ROLE.get(role, role)
        try:
            return ROLES[role][1](self)
        except KeyError:
            raise ConfigError(f"unknown tensor role {role!r}", f"one of {', '.join(ROLES)}") from None

    def layer_specs(self, layer_role: str, input_spec: QuantSpec, *,
                    depthwise: bool = False, name: str | None = None) -> tuple[QuantSpec, QuantSpec]:
        """(weight spec, input activation spec) of a Conv/Linear layer on this scheme's target.

        Args:
            layer_role: the layer's position ("", "first", "last", "first+last"), which picks its
                weight role (:data:`WEIGHT_ROLE_OF_LAYER`).
            input_spec: the spec of the activation the layer reads (as other readers left it).
            depthwise: a depthwise convolution (exempt from the int16-pair rule).
            name: the layer's module path; a layer listed in :attr:`layer_wbits` gets that weight
                width before the target's rule.

        Returns:
            The weight spec, narrowed where the target's rule asks (:meth:`layer_bits`), and the
            input spec, never wider than ``input_spec``.
        """
        w = self.layer_weight_spec(layer_role, name=name)
        if not self.rules.exportable:  # simulation only: no CPU's kernels to keep exact
            return w, input_spec
        wbits, abits = self.layer_bits(w.bits, input_spec.bits, depthwise=depthwise)
        return w.with_bits(wbits), input_spec.with_bits(min(input_spec.bits, abits))

    def layer_weight_spec(self, layer_role: str, *, name: str | None = None) -> QuantSpec:
        """The weight spec of a layer at position ``layer_role`` before the target's rule: its
        role's, or the width :attr:`layer_wbits` gives the layer path ``name``."""
        w = self.spec(weight_role(layer_role))
        override = self.layer_widths.get(name) if name is not None else None
        return w if override is None else w.with_bits(override)

    @property
    def layer_widths(self) -> dict[str, int]:
        """:attr:`layer_wbits` as a dict: layer path → weight bits (empty for a uniform scheme)."""
        return dict(self.layer_wbits)

    @property
    def mixed(self) -> bool:
        """Whether layers have their own weight widths (:attr:`layer_wbits`)."""
        return bool(self.layer_wbits)

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
                  target: str | None = None, protocol: str | None = None,
                  residual_bits: int | None = None) -> "QuantScheme":
        """Resolve the CLI's ``--bits/--wbits/--abits/--first-last-bits/--target/--residual-bits``:
        specific flags win.

        Raises:
            ConfigError: naming the flag the user gave (``--bits`` before the widths it sets).
        """
        for flag, v in (("bits", bits), ("wbits", wbits), ("abits", abits), ("first_last_bits", first_last_bits),
                        ("residual_bits", residual_bits)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not MIN_BITS <= v <= MAX_BITS):
                raise ConfigError(f"--{flag.replace('_', '-')} must be an integer in {MIN_BITS}..{MAX_BITS}, got {v!r}",
                                  f"8-bit containers hold every width from {MIN_BITS} to {MAX_BITS}; "
                                  "e.g. --bits 8, 6, 4, 3 or 2")
        b = 8 if bits is None else bits
        w = b if wbits is None else wbits
        a = b if abits is None else abits
        fl = 8 if first_last_bits is None else first_last_bits
        protocol = protocol or DEFAULT_PROTOCOL
        if get_protocol(protocol).uniform_bits:
            fl = w  # every layer at N bits; stored so that the tag and the cache key say so
        return cls(wbits=w, abits=a, first_last_bits=fl, target=target or DEFAULT_TARGET, protocol=protocol,
                   residual_bits=None if residual_bits == a else residual_bits)

    @property
    def tag(self) -> str:
        """Short name such as ``w4a4`` (``-fl8`` suffix when first/last differ); with per-layer widths
        ``w4-8a8-mp`` (the narrowest and widest listed width, then ``-mp``; ``-fl`` as before when
        first/last differ from the activations); ``w4a4-paper`` under the paper protocol; a ``-r8``
        suffix when :attr:`residual_bits` is set."""
        if self.rules.uniform_bits:
            return f"w{self.wbits}a{self.abits}-{self.protocol}"
        r = "" if self.residual_bits is None else f"-r{self.residual_bits}"
        if self.layer_wbits:
            widths = sorted(set(self.layer_widths.values()))
            w = f"{widths[0]}" if len(widths) == 1 else f"{widths[0]}-{widths[-1]}"
            return f"w{w}a{self.abits}-mp" + (f"-fl{self.first_last_bits}" if self.first_last_bits != self.abits else "") + r
        t = f"w{self.wbits}a{self.abits}"
        if self.first_last_bits not in (self.wbits,) or self.first_last_bits != self.abits:
            t += f"-fl{self.first_last_bits}"
        return t + r

    def to_dict(self) -> dict:
        """The scheme as JSON: its fields; ``layer_wbits`` as ``[[path, bits], ...]`` and
        ``residual_bits``, only when set."""
        d = asdict(self)
        if self.residual_bits is None:
            del d["residual_bits"]  # caches of schemes without it keep their keys
        if self.protocol == DEFAULT_PROTOCOL:
            del d["protocol"]  # deploy-scheme caches keep their keys
        if not self.layer_wbits:
            del d["layer_wbits"]
        else:
            d["layer_wbits"] = [[n, b] for n, b in self.layer_wbits]
        return d


def _layer_widths(value) -> tuple[tuple[str, int], ...]:
    """``layer_wbits`` given as pairs or a mapping → sorted ``((path, bits), ...)``. Raises ConfigError."""
    hint = f"per-layer widths are (layer path, bits) pairs with bits in {MIN_BITS}..{MAX_BITS}, each layer once"
    items = list(value.items()) if isinstance(value, Mapping) else list(value or ())
    out: dict[str, int] = {}
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ConfigError(f"layer_wbits: expected a (layer, bits) pair, got {item!r}", hint)
        name, bits = item
        if not isinstance(name, str) or not name:
            raise ConfigError(f"layer_wbits: a layer path must be a non-empty string, got {name!r}", hint)
        if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
            raise ConfigError(f"layer_wbits: layer {name!r} has width {bits!r}", hint)
        if name in out:
            raise ConfigError(f"layer_wbits: layer {name!r} is listed twice", hint)
        out[name] = bits
    return tuple(sorted(out.items()))
