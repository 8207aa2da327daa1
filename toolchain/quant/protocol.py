"""Quantization protocols: the deployable scheme, and the literature's looser one for comparison.

``deploy`` (default) is zqtool's scheme (ARCHITECTURE.md, "The quantized model"): BN folded into
the Conv/Linear weights, every input of a compute op quantized (the network input included),
int32 bias, first and last layers at ``first_last_bits``; it is what the QDQ ONNX file computes.

``paper`` is the protocol of the zero-shot quantization papers' tables (ZeroQ, Cai et al. 2020,
§4 and its ``quantize_model``; GDFQ, Xu et al. 2020; ZAQ, Liu et al. 2021, §4.1; GZNQ, He et al.
2021; LRQ, Luo et al. 2022), which inherit ZeroQ's code: Conv/Linear weights quantized per output
channel *before* BN (BN stays a float op, unfolded), an activation quantizer only after each
ReLU/ReLU6 (the network input, residual sums and the pooled features are not quantized on their
own), every layer at N bits including the first and the last, float bias. No integer runtime
computes that graph (an unfolded BN between an integer conv and the next quantizer is float
work), so it is **simulation only**: ``export`` and ``run`` refuse to export it and say why, and
``run`` reports the torch simulation's accuracy instead of onnxruntime's. Its numbers are for
comparison with published tables, never for deployment.

torch-free (the scheme, the CLI and the verifier import it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import ConfigError


@dataclass(frozen=True)
class Protocol:
    """How a quantized model is built from the FP graph.

    Attributes:
        name: the ``--scheme`` value.
        description: one line for ``--help``.
        fold_bn: fold each BatchNorm that follows a Conv/Linear into its weights (else the BN
            stays in the graph as a float op and the weights are quantized unfolded).
        act_quant: where activation quantizers go: ``"compute-inputs"`` (every input of a
            Conv/Linear/Add/Concat/Pool, the network input included, and every compute output
            that feeds another op) or ``"after-relu"`` (after each ReLU/ReLU6 only).
        uniform_bits: every layer at the scheme's widths (first/last layers included; the
            scheme's ``first_last_bits`` is ignored).
        quantize_bias: int32 bias on the input × weight scale (needs the layer's input on a grid).
        exportable: an integer runtime computes this graph (QDQ export allowed).
        why_simulated: for a protocol that is not exportable, the one-line reason ``export``
            and ``run`` give.
    """

    name: str
    description: str
    fold_bn: bool
    act_quant: str
    uniform_bits: bool
    quantize_bias: bool
    exportable: bool
    why_simulated: str = ""


DEFAULT_PROTOCOL = "deploy"

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("deploy", "the deployable integer model: BN folded, every compute input quantized, int32 bias, "
                       "first/last layers at --first-last-bits (what the QDQ ONNX file computes)",
             fold_bn=True, act_quant="compute-inputs", uniform_bits=False, quantize_bias=True, exportable=True),
    Protocol("paper", "the zero-shot papers' protocol, for comparison with published tables: BN unfolded, "
                      "activation quantizers only after ReLU, every layer at N bits; simulation only",
             fold_bn=False, act_quant="after-relu", uniform_bits=True, quantize_bias=False, exportable=False,
             why_simulated="the paper scheme keeps BN unfolded in float and leaves residual sums, the network "
                           "input and pooled features unquantized, which no integer runtime computes"),
)}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``.

    Raises:
        ConfigError: an unknown name.
    """
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ConfigError(f"--scheme must be one of {', '.join(PROTOCOLS)}, got {name!r}",
                          "deploy = the exportable integer model (default); paper = the literature's "
                          "protocol, simulation only") from None
