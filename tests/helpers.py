"""Small shared builders for tests: a tiny trained-looking model file and a tiny labelled npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def tiny_state_dict_file(tmp: Path, seed: int = 0) -> Path:
    """A tinynet state_dict (1×8×8 input, 10 classes) whose BN running statistics were measured
    on inputs (smooth random images in [0, 1]), as in a trained model, and non-trivial BN affines."""
    from toolchain.models.registry import get_arch
    torch.manual_seed(seed)
    m = get_arch("tinynet").builder(10, 1)
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
        bn.momentum = None  # cumulative average
    m.train()
    with torch.no_grad():
        for _ in range(8):
            blobs = torch.nn.functional.interpolate(torch.rand(32, 1, 3, 3), size=8, mode="bilinear")
            m((blobs - 0.5) / 0.5)
    m.eval()
    path = tmp / "tiny.pt"
    torch.save(m.state_dict(), path)
    return path


def tiny_npz(tmp: Path, n: int = 40, seed: int = 0, name: str = "tiny.npz") -> Path:
    """Random 8×8 grayscale images (uint8 NHWC) with labels in 0..9."""
    rng = np.random.default_rng(seed)
    path = tmp / name
    np.savez(path, images=rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8),
             labels=rng.integers(0, 10, n).astype(np.int64))
    return path


#: settings that make bnstat take a second on tinynet
FAST_BNSTAT = {"iterations": "3", "num_images": "16", "batch_size": "8"}


def method_ctx(lm, workdir=None, bits: int = 4, scheme=None):
    """A MethodContext for ``lm`` (a LoadedModel) quantized at ``bits`` (W = A; or with ``scheme``), on the CPU."""
    from toolchain.methods.registry import MethodContext
    from toolchain.quant.rewrite import fp_graph_module, quantize_graph
    from toolchain.quant.scheme import QuantScheme
    qm = quantize_graph(lm.program, scheme or QuantScheme.from_bits(bits))
    return MethodContext(teacher=fp_graph_module(lm.program), qmodel=qm, meta=lm.meta, scheme=qm.scheme,
                         device=torch.device("cpu"), workdir=workdir)


def run_method(name: str, lm, settings: dict, workdir=None, scheme=None):
    """(method instance, its ctx, the returned quantized model) of one seeded in-process run of
    method ``name`` with config ``settings`` at W4A4 (or on ``scheme``)."""
    from toolchain.methods.config import build_config
    from toolchain.methods.registry import get_method
    torch.manual_seed(0)
    ctx = method_ctx(lm, workdir, scheme=scheme)
    cls = get_method(name)
    method = cls(build_config(cls.Config, settings))
    return method, ctx, method.run(ctx)


def recording_progress(calls: list):
    """A ``progress(description, total)`` factory whose tasks append ``(description, fields)`` to
    ``calls`` on every ``advance``."""
    def progress(description, total=None):
        class Task:
            def advance(self, n=1, **fields):
                calls.append((description, fields))

            def close(self):
                pass
        return Task()
    return progress


def random_bn(m, mean=0.2, var=(0.5, 2.0)):
    """Give every BatchNorm2d of ``m`` random running statistics and affine parameters; returns m in eval."""
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-mean, mean)
            mod.running_var.uniform_(*var)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


def calibrate_minmax(qm, x: torch.Tensor) -> None:
    """Set every activation quantizer's range to the min/max it sees in one float pass (test helper)."""
    ranges, hooks = {}, []
    for name, q in qm.act_quantizers().items():
        def hook(mod, inp, out, name=name):
            ranges[name] = (float(out.min()), float(out.max()))
        hooks.append(q.register_forward_hook(hook))
    with torch.no_grad(), qm.float_mode():
        qm(x)
    for h in hooks:
        h.remove()
    for name, q in qm.act_quantizers().items():
        q.set_range(*ranges[name])
