"""GZNQ and its shared parts: the KL BN term, the reparameterized image distribution, balanced
labels, the PNG grid, the distillation loop (resume) and the method through the pipeline and CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from toolchain.artifacts import Store
from toolchain.cli import app
from toolchain.core.errors import ConfigError
from toolchain.methods.bn_stats import BNStatistics
from toolchain.methods.checkpoint import Checkpointer
from toolchain.methods.config import build_config
from toolchain.methods.distill import distill_player, kd_loss, kd_objective, make_optimizer
from toolchain.methods.gznq import (GZNQSynthesisConfig, ImageDistribution, balanced_labels,
                                    synthesize_distribution, total_variation)
from toolchain.methods.images import save_grid
from toolchain.methods.loop import TrainLoop
from toolchain.methods.registry import MethodContext, get_method
from toolchain.models.loader import load_model
from toolchain.pipeline import export_stage, load_stage, quantize_stage, synth_stage
from toolchain.quant.rewrite import fp_graph_module, quantize_graph
from toolchain.quant.scheme import QuantScheme

from helpers import tiny_state_dict_file

#: settings that make gznq take about a second on tinynet
FAST_GZNQ = {"num_images": 20, "synthesis.batch_size": 10, "iterations": 5, "ft_steps": 4, "student.batch_size": 8,
             "checkpoint_every": 2, "log_every": 1}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(tiny_state_dict_file(tmp_path_factory.mktemp("m")), arch="tinynet")


def synth(lm, **settings):
    teacher = fp_graph_module(lm.program)
    bn = BNStatistics(teacher)
    cfg = GZNQSynthesisConfig(**{"num_images": 20, "batch_size": 10, "iterations": 40, "lr": 0.1, **settings})
    torch.manual_seed(0)
    out = synthesize_distribution(teacher, bn, (1, 8, 8), (0.5,), (0.5,), 10, cfg, torch.device("cpu"))
    return teacher, bn, out


# ----------------------------------------------------------------------------- the KL term
def test_kl_bn_term_hand_computed():
    m = torch.nn.Sequential(torch.nn.BatchNorm2d(1)).eval()
    m[0].running_mean.fill_(0.0)
    m[0].running_var.fill_(1.0 - m[0].eps)  # running σ² + eps = 1
    ep = torch.export.export(m, (torch.zeros(2, 1, 2, 2),))
    teacher = fp_graph_module(ep)
    bn = BNStatistics(teacher)
    x = torch.tensor([-1.0, 3.0]).repeat(4).view(2, 1, 2, 2)  # batch mean 1, biased variance 4
    teacher(x)
    # KL(N(1, 4) ‖ N(0, 1)) = ½ (log(1/4) + (4 + 1²)/1 − 1)
    assert bn.loss("kl").item() == pytest.approx(0.5 * (math.log(0.25) + 5 - 1), rel=1e-5)
    assert bn.loss("l2").item() == pytest.approx(1.0 + 1.0, rel=1e-5)  # (1−0)² + (2−1)²


def test_synthesis_lowers_the_kl_bn_loss(tiny):
    teacher, bn, out = synth(tiny)
    torch.manual_seed(1)
    with torch.no_grad():
        teacher(torch.randn(20, 1, 8, 8).clamp(-1, 1))  # the initialization
        before = bn.loss("kl").item()
        teacher(out["mean"])
        after = bn.loss("kl").item()
    assert after < 0.5 * before
    assert out["mean"].min() >= -1 - 1e-6 and out["mean"].max() <= 1 + 1e-6  # normalized [0, 1] pixels


# ----------------------------------------------------------------------------- the distribution
def test_reparameterized_samples_differ_around_the_learned_mean(tiny):
    _, _, out = synth(tiny, iterations=10)
    assert set(out) == {"mean", "logvar", "labels"} and out["logvar"].shape == out["mean"].shape
    assert (out["logvar"] != -4.0).any()  # the log-variance is learned
    dist = ImageDistribution.from_dict(out)
    a, b = dist.sample(), dist.sample()
    assert a.shape == (20, 1, 8, 8) and not torch.equal(a, b)
    sigma = torch.exp(0.5 * out["logvar"])
    assert ((a - out["mean"]).abs() <= 6 * sigma).all()
    # the gradient reaches both the mean and the log-variance
    dist.sample(torch.tensor([0, 3])).sum().backward()
    assert dist.mean.grad[0].abs().sum() > 0 and dist.logvar.grad[3].abs().sum() > 0
    assert dist.mean.grad[1].abs().sum() == 0
    # ablation: point images
    _, _, pts = synth(tiny, iterations=2, reparameterize=False)
    assert "logvar" not in pts
    d = ImageDistribution.from_dict(pts)
    assert torch.equal(d.sample(), d.sample())


def test_labels_are_balanced_over_classes(tiny):
    counts = torch.bincount(balanced_labels(25, 10), minlength=10)
    assert counts.min() == 2 and counts.max() == 3
    _, _, out = synth(tiny, iterations=1)
    assert out["labels"].dtype == torch.int64
    assert torch.equal(torch.bincount(out["labels"], minlength=10), torch.full((10,), 2))
    for batch in out["labels"].split(10):  # every optimization batch holds every class
        assert sorted(batch.tolist()) == list(range(10))


def test_total_variation():
    x = torch.zeros(1, 1, 2, 2)
    x[..., 0, 0] = 1.0
    # |Δh|: 2 pairs, one differs by 1 → 0.5; |Δw| likewise
    assert total_variation(x).item() == pytest.approx(1.0)


def test_png_grid_size_and_denormalization(tmp_path):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    images = ((torch.ones(5, 3, 4, 6) - m) / s)  # white pixels
    labels = torch.tensor([0, 0, 0, 2, 2])
    size = save_grid(images, labels, mean, std, tmp_path / "g.png", num_classes=3, per_class=2, scale=2, pad=1)
    img = Image.open(tmp_path / "g.png")
    assert size == img.size == (2 * (12 + 1) + 1, 3 * (8 + 1) + 1) and img.mode == "RGB"
    assert img.getpixel((1, 1)) == (255, 255, 255)  # class 0, first image
    assert img.getpixel((1, 1 + 9)) == (0, 0, 0)  # class 1 has no image: black


# ----------------------------------------------------------------------------- distillation
def test_kd_loss_values():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    assert kd_loss(s, s.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-7)
    t = torch.tensor([[2.0, 0.0, 0.0]])
    p = torch.softmax(t / 2, 1)
    ref = 4 * (p * (torch.log_softmax(t / 2, 1) - torch.log_softmax(s / 2, 1))).sum()
    assert kd_loss(s, t, 2.0).item() == pytest.approx(ref.item(), rel=1e-5)


def _loop(tmp_path, steps=6):
    torch.manual_seed(0)
    teacher = torch.nn.Linear(4, 3)
    student = torch.nn.Linear(4, 3)
    params = list(student.parameters())
    opt, sched = make_optimizer(params, "sgd", 0.1, steps)
    player = distill_player(teacher, student, lambda n: (torch.randn(n, 4), None), kd_objective(2.0), 8, params,
                            opt, sched)
    return TrainLoop([player], steps, {"student": student}, counter="step",
                     checkpointer=Checkpointer(tmp_path, "d.ckpt", {"a": 1}), checkpoint_every=2, log_every=1)


def test_distill_loop_lowers_kd_and_resumes_to_the_same_result(tmp_path, monkeypatch):
    full = _loop(tmp_path / "a")
    curves = full.run()
    assert curves["step"] == list(range(6)) and curves["kd"][-1] < curves["kd"][0]

    interrupted = _loop(tmp_path / "b")

    def stop(self, player, step, losses):
        if step == 3:
            raise KeyboardInterrupt
    monkeypatch.setattr(TrainLoop, "after_step", stop)
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    monkeypatch.undo()
    resumed = _loop(tmp_path / "b")
    assert resumed.restore() and resumed.resumed_from == 2
    resumed.run()
    assert torch.equal(resumed.modules["student"].weight, full.modules["student"].weight)
    assert all(p.grad is None for p in resumed.modules["student"].parameters())  # dropped when the loop ends
    assert resumed.curves == full.curves


# ----------------------------------------------------------------------------- the method
def test_config_validation_and_finetune_modes(tiny):
    cls = get_method("gznq")
    assert build_config(cls.Config, {"finetune": "true"}).finetune == "on"
    assert build_config(cls.Config, {"finetune": False}).finetune == "off"
    for bad in ({"finetune": "maybe"}, {"bn_loss": "l1"}, {"student.optimizer": "lbfgs"}, {"synthesis.batch_size": 1},
                {"student.batch_size": 1}, {"batch_size": 8}):  # the last: ambiguous (synthesis or student)
        with pytest.raises(ConfigError):
            build_config(cls.Config, bad)
    ctx = MethodContext(teacher=None, qmodel=None, meta=tiny.meta, scheme=QuantScheme.from_bits(4),
                        device=torch.device("cpu"))
    assert cls(cls.Config()).finetunes(ctx)
    ctx.scheme = QuantScheme(wbits=8, abits=5)
    assert not cls(cls.Config()).finetunes(ctx)
    ctx.scheme = QuantScheme.from_bits(2)
    assert not cls(cls.Config(finetune="off")).finetunes(ctx)
    ctx.scheme = QuantScheme.from_bits(8)
    assert cls(cls.Config(finetune="on")).finetunes(ctx)


@pytest.mark.parametrize("bits,finetune", [(4, "auto"), (4, "off")])
def test_gznq_run_calibrates_and_finetunes_on_request(tiny, bits, finetune):
    torch.manual_seed(0)
    qm = quantize_graph(tiny.program, QuantScheme.from_bits(bits))
    before = {k: v.clone() for k, v in qm.state_dict().items()}
    ctx = MethodContext(teacher=fp_graph_module(tiny.program), qmodel=qm, meta=tiny.meta, scheme=qm.scheme,
                        device=torch.device("cpu"))
    cls = get_method("gznq")
    out = cls(build_config(cls.Config, {**FAST_GZNQ, "finetune": finetune})).run(ctx)
    assert not out.training
    for name, q in out.act_quantizers().items():
        lo, hi = q.range()
        assert math.isfinite(lo) and math.isfinite(hi) and hi > lo, name
    weights = [k for k in before if k.endswith(".weight") and "quant" not in k]
    changed = any(not torch.equal(before[k], out.state_dict()[k]) for k in weights)
    assert ctx.log["finetune"] == (finetune == "auto") == changed
    if changed:
        assert len(ctx.log["curves"]["kd"]) == FAST_GZNQ["ft_steps"]


def test_gznq_through_the_pipeline_reuses_the_synthetic_set_then_exports(tmp_path):
    store = Store(tmp_path / "runs")
    fp = load_stage(tiny_state_dict_file(tmp_path), arch="tinynet", store=store)
    logs = {}
    for bits in (8, 4):  # fine-tuning off at 8 bits, on at 4 ("auto")
        q = quantize_stage(fp, method="gznq", scheme=QuantScheme.from_bits(bits), overrides=FAST_GZNQ, store=store)
        logs[bits] = (json.loads((q.dir / "log.json").read_text()), json.loads((q.dir / "quant.json").read_text()))
        onnx = export_stage(q, store=store)
        assert onnx.qdq_path.is_file()
        x = torch.rand(3, 1, 8, 8) * 2 - 1
        with torch.no_grad():
            assert torch.isfinite(q.model()(x)).all()
    assert logs[8][0]["finetune"] is False and "curves" not in logs[8][0]
    assert logs[4][0]["finetune"] is True and len(logs[4][0]["curves"]["kd"]) == FAST_GZNQ["ft_steps"]
    assert not logs[8][1]["reused"] and list(logs[4][1]["reused"])[0].startswith("gznq/")
    assert not any((store.root / "work").rglob("*.ckpt"))
    # the synth stage finds the same artifact
    art = synth_stage(fp, method="gznq", overrides=FAST_GZNQ, store=store)
    assert art.images.shape == (20, 1, 8, 8) and art.labels.shape == (20,)
    assert len(list((store.root / "synth").iterdir())) == 1
    with pytest.raises(ConfigError, match="no synthetic set"):
        synth_stage(fp, method="minmax", store=store)


def test_cli_synth_writes_the_png_grid(tmp_path):
    model = tiny_state_dict_file(tmp_path)
    png = tmp_path / "grid.png"
    args = ["synth", model, "--arch", "tinynet", "--out", tmp_path / "runs", "--png", png, "--per-class", "2",
            "--set", "num_images=20", "--set", "synthesis.batch_size=10", "--set", "iterations=2"]
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    assert Path(r.stdout.strip().splitlines()[-1]).parent == tmp_path / "runs" / "synth"
    # 8×8 cells upscaled ×8, 2 per class, 10 classes, 2 px padding
    assert Image.open(png).size == (2 * (64 + 2) + 2, 10 * (64 + 2) + 2)


@pytest.mark.parametrize("learn", [False, True])
def test_gznq_finetuning_learns_scales_only_on_request(tiny, learn):
    torch.manual_seed(0)
    qm = quantize_graph(tiny.program, QuantScheme.from_bits(4))
    ctx = MethodContext(teacher=fp_graph_module(tiny.program), qmodel=qm, meta=tiny.meta, scheme=qm.scheme,
                        device=torch.device("cpu"))
    cls = get_method("gznq")
    calibrated = {}
    orig = cls._finetune

    def spy(self, ctx, dist, labels):  # the scales as calibration left them, just before fine-tuning
        calibrated.update({n: q.scale.detach().clone() for n, q in ctx.qmodel.act_quantizers().items()})
        return orig(self, ctx, dist, labels)

    cls._finetune = spy
    try:
        out = cls(build_config(cls.Config, {**FAST_GZNQ, "ft_lr": 1e-2, "learn_act_scales": learn,
                                            "learn_weight_scales": learn})).run(ctx)
    finally:
        cls._finetune = orig
    moved = [n for n, q in out.act_quantizers().items()
             if n != "act_quant.input" and not torch.equal(q.scale.detach(), calibrated[n])]
    assert bool(moved) == learn
    assert torch.equal(out.act_quantizers()["act_quant.input"].scale.detach(), calibrated["act_quant.input"])
    assert not any(q.scale.requires_grad for q in out.quantizers())  # frozen again for export
