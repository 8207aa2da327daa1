"""Block reconstruction (AdaRound/BRECQ): learned rounding, blocks from the graph, the step every
method can end with, checkpoints — on tinynet and tiny hand-made graphs in seconds."""

from __future__ import annotations

import copy

import json

import onnx
import pytest
import torch
from onnx import numpy_helper

from toolchain.artifacts import Store
from toolchain.core.errors import ConfigError, UnsupportedModelError
from toolchain.methods.config import build_config
from toolchain.methods.reconstruct import ReconstructionConfig, adaround_blocks, beta_at
from toolchain.methods.registry import get_method
from toolchain.models.loader import load_model
from toolchain.pipeline import export_stage, load_stage, quantize_stage, run
from toolchain.quant import adaround
from toolchain.quant.blocks import partition, tensors_of
from toolchain.quant.quantizers import IntWeightPerChannelFloat
from toolchain.quant.rewrite import quantize_graph
from toolchain.quant.scheme import QuantScheme

from helpers import FAST_BNSTAT, calibrate_minmax, method_ctx, tiny_npz, tiny_state_dict_file

FAST_RECON = {"reconstruct": "adaround", "recon.steps": "40", "recon.batch": "8"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(tiny_state_dict_file(tmp_path_factory.mktemp("m")), arch="tinynet")


def images(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    blobs = torch.nn.functional.interpolate(torch.rand(n, 1, 3, 3, generator=g), size=8, mode="bilinear")
    return (blobs - 0.5) / 0.5


def calibrated(lm, bits):
    qm = quantize_graph(lm.program, QuantScheme.from_bits(bits)).eval()
    calibrate_minmax(qm, images(64, seed=1))
    return qm


# ---- learned rounding -----------------------------------------------------------------------

def test_adaround_starts_at_the_float_weight_and_hard_rounding_is_round_to_nearest():
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3)
    q = IntWeightPerChannelFloat(4, 6)
    q.init_from(w)
    ada = adaround.AdaRoundWeightQuant(q, w)
    assert torch.allclose(ada(w), w, atol=1e-5)  # soft rounding h(α) = frac(w/s) inside the grid
    ada.soft = False
    assert torch.equal(ada(w), q(w))  # α ≥ 0 ⇔ frac ≥ 0.5: nearest (no ties in random weights)
    assert float(ada.regularizer(2.0).detach()) > 0


def test_bake_writes_codes_that_export_reads_back_unchanged():
    torch.manual_seed(0)
    from toolchain.quant.layers import QuantConv2d
    from toolchain.quant.spec import weight_spec
    layer = QuantConv2d(torch.randn(4, 2, 3, 3), None, weight_spec(3))
    ada = adaround.attach(layer)
    with torch.no_grad():
        ada.alpha.copy_(torch.randn_like(ada.alpha) * 3)  # some weights now round the other way
    expect = ada.codes()
    codes = adaround.bake(layer)
    assert type(layer.weight_quant) is IntWeightPerChannelFloat
    assert torch.equal(codes.float(), expect)
    assert torch.equal(layer.weight_quant.int_repr(layer.weight), codes)
    with pytest.raises(TypeError, match="attach"):
        adaround.bake(layer)


def test_mse_weight_scale_lowers_the_weight_error():
    torch.manual_seed(0)
    w = torch.randn(8, 16) * torch.linspace(0.5, 2, 8)[:, None]
    w[:, 0] *= 6  # an outlier per channel: min-max wastes the grid on it
    q = IntWeightPerChannelFloat(3, 8)
    q.init_from(w)
    err_minmax = (q(w) - w).abs().pow(2.4).sum()
    ratio = adaround.mse_weight_scale(q, w)
    assert float((q(w) - w).abs().pow(2.4).sum()) < float(err_minmax)
    assert bool((ratio < 1).any()) and bool((ratio <= 1).all())


def test_beta_schedule_has_a_warmup_then_anneals():
    cfg = ReconstructionConfig(steps=100, warmup=0.2, beta_start=20, beta_end=2)
    assert beta_at(0, cfg) is None and beta_at(19, cfg) is None
    assert beta_at(20, cfg) == pytest.approx(20) and beta_at(99, cfg) == pytest.approx(2.225)
    assert beta_at(60, cfg) < beta_at(40, cfg)


# ---- blocks ---------------------------------------------------------------------------------

class Residual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
        self.a = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                     torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.a(x) + x)
        return self.head(x.mean((2, 3)))


def test_partition_finds_the_residual_block_and_chains_to_the_model_output():
    ep = torch.export.export(Residual().eval(), (torch.randn(2, 1, 8, 8),))
    qm = quantize_graph(ep, QuantScheme.from_bits(8)).eval()
    calibrate_minmax(qm, images(8))
    blocks = partition(qm)
    layers = [b.layers for b in blocks]
    assert len(layers) == 3 and len(layers[1]) == 2  # stem | the residual pair | head
    assert sum(map(len, layers)) == len(qm.layers())
    x = images(4)
    h = x
    for b in blocks:
        h = b.module(h)
    assert torch.equal(tensors_of(h)[0], qm(x))
    assert [len(b.layers) for b in partition(qm, min_layers=3)] == [3, 1]


# ---- reconstruction -------------------------------------------------------------------------

def output_mse(qm, fp_qm, x):
    with torch.no_grad():
        with fp_qm.float_mode():
            ref = fp_qm(x)
        return float((qm(x) - ref).pow(2).mean())


def test_reconstruction_lowers_every_blocks_output_error_and_the_models(tiny):
    torch.manual_seed(0)
    qm = calibrated(tiny, 3)
    x = images(64, seed=2)
    before = output_mse(qm, qm, x)
    log = adaround_blocks(qm, images(32), ReconstructionConfig(steps=150, batch=16))
    assert len(log.blocks) == len(partition(qm)) and log.seconds > 0
    assert all(b.mse_after < b.mse_before for b in log.blocks), [(b.mse_before, b.mse_after) for b in log.blocks]
    assert output_mse(qm, qm, x) < before  # on images it was not trained on
    assert not any(p.requires_grad for q in qm.quantizers() for p in [q.scale])
    assert not any(isinstance(layer.weight_quant, adaround.AdaRoundWeightQuant) for layer in qm.layers().values())


def test_learned_weight_step_sizes_move_lower_the_error_and_bake_to_exact_codes(tiny):
    """GENIE-M: the per-channel weight scales learn with the rounding; the baked weights are still
    codes × the (new) scale, so export reads the learned codes back unchanged."""
    torch.manual_seed(0)
    qm = calibrated(tiny, 3)
    x = images(64, seed=2)
    before_scales = {n: layer.weight_quant.scale.detach().clone() for n, layer in qm.layers().items()}
    fixed = copy.deepcopy(qm)
    adaround_blocks(fixed, images(32), ReconstructionConfig(steps=150, batch=16, weight_init="minmax"))
    log = adaround_blocks(qm, images(32), ReconstructionConfig(steps=150, batch=16, weight_init="minmax",
                                                               weight_scale_lr=1e-3))
    assert all(b.kept and b.mse_after < b.mse_before for b in log.blocks)
    moved = [n for n, layer in qm.layers().items() if not torch.equal(layer.weight_quant.scale, before_scales[n])]
    assert moved, "no weight scale was learned"
    assert all(torch.equal(fixed.layers()[n].weight_quant.scale, before_scales[n]) for n in before_scales)
    for layer in qm.layers().values():
        q = layer.weight_quant
        codes = q.int_repr(layer.weight).float()
        s = q.effective_scale().view(-1, *[1] * (codes.ndim - 1))
        assert torch.equal(codes * s, layer.weight) and not q.scale.requires_grad


def test_a_block_made_worse_is_restored_to_round_to_nearest(tiny, monkeypatch):
    from toolchain.methods import reconstruct as rec
    torch.manual_seed(0)
    qm = calibrated(tiny, 4)
    x = images(32)
    reference = copy.deepcopy(qm)

    def sabotage(block, qmodel, *args, **kwargs):  # a "reconstruction" that ruins the block
        with torch.no_grad():
            for name in block.layers:
                qmodel.gm.get_submodule(name).weight.mul_(-1)

    monkeypatch.setattr(rec, "reconstruct_block", sabotage)
    log = adaround_blocks(qm, x, ReconstructionConfig(steps=1, weight_init="minmax"))
    assert log.blocks and not any(b.kept for b in log.blocks) and all(b.mse_after > b.mse_before for b in log.blocks)
    assert all(torch.equal(a, b) for a, b in zip(qm.state_dict().values(), reference.state_dict().values()))
    assert log.to_dict()["blocks"][0]["kept"] is False


def test_resume_after_an_interruption_gives_the_same_model(tiny, tmp_path):
    from toolchain.methods.checkpoint import Checkpointer
    cfg = ReconstructionConfig(steps=20, batch=8, drop=0.5)
    x = images(16)

    torch.manual_seed(0)
    whole = calibrated(tiny, 4)
    adaround_blocks(whole, x, cfg)

    calls = []

    def interrupting(description, total=None):
        class Task:
            def advance(self, n=1, **fields):
                calls.append(1)
                if len(calls) == 30:  # inside the second block
                    raise KeyboardInterrupt

            def close(self):
                pass
        return Task()

    torch.manual_seed(0)
    qm = calibrated(tiny, 4)
    ck = Checkpointer(tmp_path, "r.ckpt", {"cfg": 1})
    with pytest.raises(KeyboardInterrupt):
        adaround_blocks(qm, x, cfg, progress=interrupting, checkpointer=ck)
    assert ck.exists()
    qm2 = calibrated(tiny, 4)  # a fresh process: the method ran again, then reconstruction resumes
    log = adaround_blocks(qm2, x, cfg, checkpointer=ck)
    assert log.resumed_after == 1 and not ck.exists()
    for k, v in whole.state_dict().items():
        assert torch.equal(v, qm2.state_dict()[k]), k


def test_reconstruct_is_a_setting_of_every_method():
    for name in ("minmax", "bnstat", "gznq", "lrq", "zaq"):
        cls = get_method(name)
        cfg = build_config(cls.Config, {"reconstruct": "adaround", "recon.steps": "7"})
        assert cfg.reconstruct == "adaround" and cfg.recon.steps == 7
        assert build_config(cls.Config, {}).reconstruct == "none"
    with pytest.raises(ConfigError, match="reconstruct"):
        build_config(get_method("bnstat").Config, {"reconstruct": "brecq2"})
    with pytest.raises(ConfigError, match="recon.drop"):
        build_config(get_method("bnstat").Config, {"recon.drop": "1.5"})
    # the bare names README uses stay unambiguous
    assert build_config(get_method("bnstat").Config, {"iterations": "5"}).synthesis.iterations == 5


def test_quantize_with_reconstruction_exports_the_learned_codes(tmp_path):
    store = Store(tmp_path / "runs")
    fp = load_stage(tiny_state_dict_file(tmp_path), arch="tinynet", store=store)
    scheme = QuantScheme.from_bits(4)
    plain = quantize_stage(fp, method="bnstat", scheme=scheme, overrides=FAST_BNSTAT, store=store)
    q = quantize_stage(fp, method="bnstat", scheme=scheme, overrides={**FAST_BNSTAT, **FAST_RECON}, store=store)
    assert q.key != plain.key
    log = json.loads((q.dir / "log.json").read_text())
    assert log["reconstruction"]["kind"] == "adaround" and log["reconstruction"]["blocks"]
    qm = q.model()
    changed = 0
    onx = onnx.load(export_stage(q, store=store).qdq_path)
    inits = {i.name: numpy_helper.to_array(i) for i in onx.graph.initializer}
    pm = plain.model()
    for name, layer in qm.layers().items():
        codes = layer.weight_quant.int_repr(layer.weight)
        changed += int((codes != pm.layers()[name].weight_quant.int_repr(pm.layers()[name].weight)).sum())
        match = [v for v in inits.values() if v.dtype.kind == "i" and v.shape == tuple(codes.shape)
                 and (v == codes.numpy()).all()]
        assert match, f"{name}: the exported weights are not the learned codes"
    assert changed > 0  # the rounding was learned, not round-to-nearest


def test_run_with_reconstruction_keeps_torch_onnxruntime_parity(tmp_path):
    store = Store(tmp_path / "runs")
    r = run(tiny_state_dict_file(tmp_path), tiny_npz(tmp_path), load_options={"arch": "tinynet"}, method="minmax",
            scheme=QuantScheme.from_bits(4), overrides=FAST_RECON, latency_runs=2, parity_images=16, store=store)
    assert r.parity.off.agreement_top1 == 100.0 and r.parity.on.max_diff_lsb <= 1.0


def test_reconstruction_needs_batchnorm_statistics_and_says_so(tmp_path):
    class NoBN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(1, 4, 3)
            self.f = torch.nn.Linear(4, 10)

        def forward(self, x):
            return self.f(torch.relu(self.c(x)).mean((2, 3)))

    p = tmp_path / "nobn.pt2"
    torch.export.save(torch.export.export(NoBN().eval(), (torch.randn(1, 1, 8, 8),)), p)
    store = Store(tmp_path / "runs")
    fp = load_stage(p, store=store)
    quantize_stage(fp, method="minmax", store=store)  # fine without reconstruction
    with pytest.raises(UnsupportedModelError, match="minmax with reconstruct"):
        quantize_stage(fp, method="minmax", overrides={"reconstruct": "adaround"}, store=store)
