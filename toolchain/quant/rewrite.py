"""Graph rewrite: FP torch.export program → :class:`QuantizedModel` (the deploy scheme).

Works on any CNN that torch.export can trace (not only zoo classes). Steps, on the
ATen graph of ``ExportedProgram.module()``:

1. clean: drop the export guard call, eval-mode dropout, clones and aliases;
2. fold every BatchNorm that follows a Conv/Linear into it (:mod:`.fold`);
3. replace Conv/Linear calls by :class:`QuantConv2d` / :class:`QuantLinear` modules
   (per-channel weight quantizers, int32 bias);
4. insert per-tensor activation quantizers so that every tensor entering a COMPUTE op
   (Conv, Linear, Add, Concat, average pooling) lies on an integer grid — the network input
   included — and every COMPUTE output that feeds another op is quantized (after the ReLU/ReLU6 that follows it,
   if any, so the quantizer is unsigned with zero_point 0 there). Ops that keep values
   on their input's grid (reshape, slice, zero padding, max pooling) need no quantizer;
5. specs: each quantized tensor's role in the graph — the network input, an activation
   known to be >= 0 or not, the input of the first/last Conv/Linear layer (no Conv/Linear
   before / after it) or inner, a first/last or inner layer's weights — is looked up in
   the scheme (:meth:`QuantScheme.spec`), which then applies a layer's own weight width (mixed
   precision, asked by the layer's module path) and its target's rule to each layer's weight and
   input specs (:meth:`QuantScheme.layer_specs`: e.g. narrower weights where the codes could
   saturate the target's kernels); every quantizer is built from its
   spec (:func:`.quantizers.quantizer_from_spec`). The logits (used only as the graph output)
   are left in float.

The FP program is not modified. Under the ``paper`` protocol (:mod:`.protocol`; simulation only)
step 2 is skipped (BN stays a float op after its layer), step 4 places one unsigned quantizer
after each ReLU/ReLU6 and nowhere else (:data:`ACT_PLACEMENT`), and biases stay float.
"""

from __future__ import annotations

import copy
import re

import torch
from torch import fx

from ..core.errors import ConfigError, UnsupportedModelError
from ..graph.fx import get_attr_value
from ..naming import unique_name
from ..targets import is_depthwise
from ..graph import ops
from .fold import fold_bn
from .layers import QuantConv2d, QuantLinear, QuantLayer
from .model import QuantizedModel
from .quantizers import quantizer_from_spec
from .scheme import QuantScheme, activation_role
from .spec import QuantSpec

ACT_QUANT_PREFIX = "act_quant"


def fp_graph_module(program) -> fx.GraphModule:
    """A fresh, cleaned FP GraphModule of an ExportedProgram (or a copy of a GraphModule).

    A plain ``fx.GraphModule`` (``ExportedProgram.module()`` refuses ``.eval()``/``.train()``);
    the program was exported in eval mode, so the graph computes inference either way.
    Input (N, C, H, W) float32 → logits.
    """
    if isinstance(program, fx.GraphModule):
        gm = copy.deepcopy(program)
    else:
        from ..graph.fx import fp_module
        gm = fp_module(program)
    clean_graph(gm)
    return fx.GraphModule(gm, gm.graph).eval()


def clean_graph(gm: fx.GraphModule) -> None:
    """Remove inference no-ops (dropout in eval, clone, alias, contiguous) and in-place ops, in place.

    An in-place op (``hardswish_``, ``add_`` …) becomes its out-of-place form; later readers of
    the mutated tensor read the op's result instead, so the graph is pure dataflow.
    """
    g = gm.graph
    order = {n: i for i, n in enumerate(g.nodes)}
    for n in list(g.nodes):
        functional = ops.functional_form(n.target) if n.op == "call_function" else None
        if functional is None or not n.args or not isinstance(n.args[0], fx.Node):
            continue
        mutated = n.args[0]
        for u in list(mutated.users):
            if u is not n and order[u] > order[n]:
                u.replace_input_with(mutated, n)
        n.target = functional
    for n in g.nodes:  # contiguous() is dropped below, so a view after a transpose must be a reshape
        if n.op == "call_function" and n.target is ops.aten.view.default:
            n.target = ops.aten.reshape.default
    for n in list(g.nodes):
        if n.op == "call_function" and n.target in ops.IDENTITY:
            if n.target in (ops.aten.dropout.default, ops.aten.feature_dropout.default) and \
                    len(n.args) > 2 and n.args[2]:
                raise UnsupportedModelError(
                    f"node {n.name} is dropout in training mode",
                    "export the model after model.eval()")
            n.replace_all_uses_with(n.args[0])
            g.erase_node(n)
    g.eliminate_dead_code()
    gm.recompile()


def _val(gm, node):
    return None if node is None else get_attr_value(gm, node.target).detach()


def _module_path(weight_node: fx.Node, taken: set[str]) -> str:
    path = weight_node.target.rsplit(".", 1)[0] if "." in weight_node.target else weight_node.target
    return unique_name(path, taken)


def _replace_layers(gm: fx.GraphModule, scheme: QuantScheme) -> dict[fx.Node, QuantLayer]:
    """Fold BN into Conv/Linear (unless the scheme's protocol keeps BN unfolded, as a float op after
    the layer) and swap them for quantized layer modules; returns node → layer."""
    g = gm.graph
    layers: dict[fx.Node, QuantLayer] = {}
    taken: set[str] = set()
    for n in list(g.nodes):
        if n.op != "call_function" or n.target not in ops.CONV | ops.LINEAR:
            continue
        x, w_node = n.args[0], n.args[1]
        b_node = n.args[2] if len(n.args) > 2 else n.kwargs.get("bias")
        if not (isinstance(w_node, fx.Node) and w_node.op == "get_attr") or \
                (b_node is not None and getattr(b_node, "op", None) != "get_attr"):
            raise UnsupportedModelError(
                f"layer {n.name}: its weight is computed in the graph, not a parameter",
                "zqtool quantizes Conv/Linear layers with constant weights")
        w, b = _val(gm, w_node), _val(gm, b_node)
        bn_prior = None
        users = list(n.users)
        if scheme.rules.fold_bn and len(users) == 1 and users[0].target in ops.BATCH_NORM:
            bn = users[0]
            _, gamma, beta, mean, var, eps = ops.bn_args(bn)
            gamma, beta = _val(gm, gamma), _val(gm, beta)
            w, b = fold_bn(w, b, gamma, beta, _val(gm, mean), _val(gm, var), eps)
            cout = w.shape[0]
            bn_prior = (torch.zeros(cout) if beta is None else beta.float(),
                        torch.ones(cout) if gamma is None else gamma.float().abs())
            for out in ops.bn_output(bn):
                out.replace_all_uses_with(n)
                g.erase_node(out)
            if bn.target is not ops.aten.batch_norm.default:
                g.erase_node(bn)
        if n.target in ops.CONV:
            a = list(n.args) + [None] * (7 - len(n.args))
            stride, padding, dilation, groups = (a[3] or [1, 1]), (a[4] or [0, 0]), (a[5] or [1, 1]), (a[6] or 1)
            if isinstance(padding, str):
                raise UnsupportedModelError(f"layer {n.name}: padding={padding!r} is not supported",
                                            "use explicit integer padding in the model")
            layer = QuantConv2d(w, b, scheme.spec("weight"), _pair(stride), _pair(padding), _pair(dilation), groups)
        else:
            layer = QuantLinear(w, b, scheme.spec("weight"))
        if bn_prior is not None:
            layer.register_buffer("bn_mean", bn_prior[0], persistent=False)
            layer.register_buffer("bn_std", bn_prior[1], persistent=False)
        path = _module_path(w_node, taken)
        gm.add_submodule(path, layer)
        with g.inserting_before(n):
            new = g.call_module(path, (x,))
        new.meta = dict(n.meta)
        n.replace_all_uses_with(new)
        g.erase_node(n)
        layers[new] = layer
    g.eliminate_dead_code()
    return layers


def _pair(v):
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return tuple(v * 2 if len(v) == 1 else v)


def _is_compute(n: fx.Node, layers) -> bool:
    return n in layers or (n.op == "call_function" and n.target in ops.COMPUTE) or ops.is_tensor_mul(n)


def _tensor_inputs(n: fx.Node) -> list[fx.Node]:
    if n.op == "call_function" and n.target in ops.CAT:
        return [a for a in n.args[0] if isinstance(a, fx.Node)]
    if n.op == "call_module":
        return [n.args[0]]
    if n.target in ops.ADD or n.target in ops.MUL:
        return [a for a in n.args[:2] if isinstance(a, fx.Node)]
    return [n.args[0]]


def _nonneg(n: fx.Node, memo: dict) -> bool:
    """Whether the node's values are known to be >= 0 (so an unsigned, zero_point-0 quantizer fits)."""
    if n in memo:
        return memo[n]
    r = False
    if n.op == "call_module" and n.target.startswith(ACT_QUANT_PREFIX + "."):
        r = _nonneg(n.args[0], memo)
    elif n.op == "call_function":
        if n.target in ops.ACTIVATION:
            lo, _ = ops.clamp_bounds(n)
            r = lo is not None and lo >= 0
        elif ops.is_transparent(n) or n.target in ops.AVG_POOL:
            r = _nonneg(n.args[0], memo)
        elif n.target in ops.ADD or ops.is_tensor_mul(n):
            r = all(_nonneg(a, memo) for a in _tensor_inputs(n))
        elif n.target in ops.HARDSIGMOID | ops.SIGMOID:
            r = True
        elif n.target in ops.CAT:
            r = all(_nonneg(a, memo) for a in _tensor_inputs(n))
    memo[n] = r
    return r


def _name_for(n: fx.Node, layers) -> str:
    """A readable quantizer name: the producing layer's path, else the node name."""
    src = n
    while src.op == "call_function" and src.target in ops.ACTIVATION and isinstance(src.args[0], fx.Node):
        src = src.args[0]
    if src in layers:
        return src.target.replace(".", "_")
    if n.op == "placeholder":
        return "input"
    return re.sub(r"\W", "_", n.name)


class _Inserter:
    """Inserts activation quantizers and tracks which node lies on which quantizer's grid.

    A quantizer is inserted with the spec of an inner activation of its sign; the final spec,
    which depends on its consumers, replaces it once every quantizer is placed (:func:`_set_specs`).
    """

    def __init__(self, gm: fx.GraphModule, layers: dict, scheme: QuantScheme):
        self.gm, self.g, self.layers, self.scheme = gm, gm.graph, layers, scheme
        self.grid: dict[fx.Node, fx.Node] = {}  # node -> quantizer node whose grid it lies on
        self.nonneg: dict = {}
        self.qnodes: dict[fx.Node, fx.Node] = {}  # producer -> its quantizer node
        self.unsigned: dict[fx.Node, bool] = {}  # quantizer node -> its input is known to be >= 0
        self.names: set[str] = set()

    def grid_of(self, n: fx.Node) -> fx.Node | None:
        if n in self.grid:
            return self.grid[n]
        if n.op == "call_function" and (ops.is_transparent(n) or n.target in ops.RELU):
            g = self.grid_of(n.args[0])
            if n.target in ops.RELU and g is None:
                return None
            return g
        return None

    def chain_root(self, n: fx.Node) -> fx.Node:
        """Walk back through grid-preserving ops to the node where a quantizer belongs."""
        while n.op == "call_function" and ops.is_transparent(n) and isinstance(n.args[0], fx.Node):
            n = n.args[0]
        return n

    def quantize_at(self, n: fx.Node) -> fx.Node:
        if n in self.qnodes:
            return self.qnodes[n]
        unsigned = _nonneg(n, self.nonneg)
        name = unique_name(_name_for(n, self.layers), self.names)
        target = f"{ACT_QUANT_PREFIX}.{name}"
        spec = self.scheme.spec(activation_role(unsigned=unsigned, edge=False))
        self.gm.add_submodule(target, quantizer_from_spec(spec))
        with self.g.inserting_after(n):
            q = self.g.call_module(target, (n,))
        n.replace_all_uses_with(q, delete_user_cb=lambda u: u is not q)
        self.qnodes[n] = q
        self.unsigned[q] = unsigned
        self.grid[q] = q
        self.grid[n] = q
        return q

    def ensure_input_on_grid(self, a: fx.Node) -> fx.Node:
        g = self.grid_of(a)
        if g is not None:
            return g
        return self.quantize_at(self.chain_root(a))

    def output_point(self, n: fx.Node) -> fx.Node:
        """Where a COMPUTE node's output quantizer goes: after a sole-user ReLU/ReLU6 chain."""
        while len(n.users) == 1:
            u = next(iter(n.users))
            if u.op == "call_function" and u.target in ops.ACTIVATION:
                n = u
            else:
                break
        return n


def _layer_roles(layers: dict) -> None:
    """Mark layers with no Conv/Linear before them 'first' and with none after them 'last'."""
    def reach(start, forward: bool) -> bool:
        seen, stack = set(), [start]
        while stack:
            n = stack.pop()
            nxt = list(n.users) if forward else [a for a in n.all_input_nodes]
            for m in nxt:
                if m in seen:
                    continue
                seen.add(m)
                if m in layers:
                    return True
                stack.append(m)
        return False

    for node, layer in layers.items():
        roles = []
        if not reach(node, forward=False):
            roles.append("first")
        if not reach(node, forward=True):
            roles.append("last")
        layer.role = "+".join(roles)


def _consumers_on_grid(q: fx.Node) -> list[fx.Node]:
    """COMPUTE/other nodes fed by quantizer node q, looking through grid-preserving ops."""
    out, stack = [], list(q.users)
    while stack:
        u = stack.pop()
        if u.op == "call_function" and (ops.is_transparent(u) or u.target in ops.RELU):
            stack.extend(u.users)
        else:
            out.append(u)
    return out


def _feeds_only_output(n: fx.Node) -> bool:
    """True when the node is used only as a graph output (the logits).

    The logits enter no Conv/Linear/Add/Concat/Pool, so the deploy scheme leaves them in
    float: onnxruntime's QGemm/QLinearConv still run in integer and dequantize their output.
    Quantizing 1000 logits to 8 bits would clip the largest and tie many, flipping top-1.
    """
    return all(u.op == "output" for u in n.users)


def _is_edge(consumers: list[fx.Node], layers: dict, output_nodes: set[fx.Node]) -> bool:
    """Whether a quantizer whose ops on grid are ``consumers`` (:func:`_consumers_on_grid`) feeds a
    first/last layer or the graph output: its tensor gets ``first_last_bits``."""
    return any(c in layers and layers[c].role for c in consumers) \
        or any(c in output_nodes or c.op == "output" for c in consumers)


def _read_by_no_layer(consumers: list[fx.Node], layers: dict) -> bool:
    """Whether a quantizer whose ops on grid are ``consumers`` feeds other ops but no Conv/Linear:
    a residual branch's output before its Add."""
    return bool(consumers) and not any(c in layers for c in consumers)


def _set_specs(gm: fx.GraphModule, ins: _Inserter, layers: dict, input_q: fx.Node, scheme: QuantScheme) -> None:
    """Ask the scheme for every quantizer's spec by its tensor's role, build the quantizers, link
    each layer to its input quantizer.

    Activation specs come first (:meth:`QuantScheme.spec`); then, layer by layer in graph order,
    the scheme's per-layer width (``layer_wbits``, by the layer's module path) and the target's rule
    may change a layer's weights or narrow the input spec it shares with later readers
    (:meth:`QuantScheme.layer_specs`).

    Raises:
        ConfigError: ``scheme.layer_wbits`` names a layer the model does not have.
    """
    unknown = sorted(set(scheme.layer_widths) - {n.target for n in layers})
    if unknown:
        raise ConfigError(f"the scheme gives weight widths to {len(unknown)} layer(s) this model does not have: "
                          f"{', '.join(unknown[:4])}{' …' if len(unknown) > 4 else ''}",
                          f"layer paths are QuantizedModel.layers() names, e.g. "
                          f"{', '.join(n.target for n in list(layers)[:3])}")
    output_nodes: set[fx.Node] = set()
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    fx.node.map_arg(out_node.args, lambda a: output_nodes.add(a))
    consumers = {qn: _consumers_on_grid(qn) for qn in ins.qnodes.values()}
    act_specs: dict[fx.Node, QuantSpec] = {
        qn: scheme.spec(activation_role(unsigned=ins.unsigned[qn], edge=_is_edge(c, layers, output_nodes),
                                        network_input=qn is input_q, unread=_read_by_no_layer(c, layers)))
        for qn, c in consumers.items()}
    linked = scheme.rules.quantize_bias  # an int32 bias needs the input's scale; else the bias stays float
    for n, layer in layers.items():
        if not linked:
            layer.set_weight_spec(scheme.layer_weight_spec(layer.role, name=n.target))
            continue
        qn = ins.grid_of(n.args[0])
        dw = isinstance(layer, QuantConv2d) and is_depthwise(layer.weight.shape[0], layer.weight.shape[1], layer.groups)
        w_spec, act_specs[qn] = scheme.layer_specs(layer.role, act_specs[qn], depthwise=dw, name=n.target)
        layer.set_weight_spec(w_spec)
    for qn, spec in act_specs.items():
        gm.add_submodule(qn.target, quantizer_from_spec(spec))
    for n, layer in layers.items():
        if linked:
            layer.link_input_quant(gm.get_submodule(ins.grid_of(n.args[0]).target))


def _place_at_compute_inputs(gm: fx.GraphModule, ins: _Inserter, layers: dict, placeholder: fx.Node) -> fx.Node:
    """The deploy protocol: the network input (ARCHITECTURE.md: "the network input included"), every
    input of a COMPUTE op and every COMPUTE output that feeds another op. Returns the input's quantizer."""
    input_q = ins.quantize_at(placeholder)
    compute = [n for n in gm.graph.nodes if _is_compute(n, layers)]
    for n in compute:
        for a in _tensor_inputs(n):
            ins.ensure_input_on_grid(a)
    for n in compute:
        pt = ins.output_point(n)
        if ins.grid_of(pt) is None and not _feeds_only_output(pt):
            ins.quantize_at(pt)
    return input_q


def _place_after_relu(gm: fx.GraphModule, ins: _Inserter, layers: dict, placeholder: fx.Node) -> None:
    """The paper protocol (ZeroQ's ``quantize_model``: each ReLU/ReLU6 becomes ReLU + QuantAct): one
    unsigned quantizer after every activation whose output is known to be >= 0; nothing else."""
    for n in list(gm.graph.nodes):
        if n.op == "call_function" and n.target in ops.ACTIVATION and _nonneg(n, ins.nonneg) \
                and not _feeds_only_output(n):
            ins.quantize_at(n)
    return None


#: :attr:`Protocol.act_quant <toolchain.quant.protocol.Protocol.act_quant>` → where the quantizers go
ACT_PLACEMENT = {"compute-inputs": _place_at_compute_inputs, "after-relu": _place_after_relu}


def quantize_graph(program, scheme: QuantScheme, *, strict: bool = False) -> QuantizedModel:
    """Build the quantized model of an FP program.

    Args:
        program: a ``torch.export.ExportedProgram`` (or an FP ``fx.GraphModule``) whose
            forward takes (N, C, H, W) float32 and returns logits.
        scheme: the spec of each tensor role (:class:`.scheme.QuantScheme`).
        strict: refuse a graph with ops the vocabulary (:mod:`toolchain.graph.ops`) does not know, instead of
            running them in float between DequantizeLinear and QuantizeLinear.

    Returns:
        A :class:`QuantizedModel` whose quantizers are initialized (weights by per-channel
        max|w|; activations to scale 1 — calibrate them before use). ``float_ops`` /
        ``unknown_ops`` (op name → count, :func:`~toolchain.graph.ops.op_census`) say what runs in float.

    Raises:
        UnsupportedModelError: the graph has no Conv/Linear layer, or a layer whose
            weight is not a constant, or an op the rewrite cannot place; under ``strict``, an
            op the vocabulary does not know.
        ConfigError: the scheme's per-layer widths name a layer the model does not have.
    """
    gm = fp_graph_module(program)
    layers = _replace_layers(gm, scheme)
    if not layers:
        raise UnsupportedModelError("the model has no Conv2d or Linear layer to quantize")
    _layer_roles(layers)
    ins = _Inserter(gm, layers, scheme)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedModelError(f"the model takes {len(placeholders)} inputs; zqtool supports one image input")
    input_q = ACT_PLACEMENT[scheme.rules.act_quant](gm, ins, layers, placeholders[0])
    _set_specs(gm, ins, layers, input_q, scheme)

    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm = fx.GraphModule(gm, gm.graph)
    qmodel = QuantizedModel(gm, scheme)
    qmodel.float_ops, qmodel.unknown_ops = ops.op_census(gm)
    if strict and qmodel.unknown_ops:
        raise UnsupportedModelError(
            f"--strict: zqtool has no quantized form for {ops.format_counts(qmodel.unknown_ops)}",
            "drop --strict to run them in float between DequantizeLinear and QuantizeLinear")
    return qmodel
