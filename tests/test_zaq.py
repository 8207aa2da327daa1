"""ZAQ and its shared parts: generator, feature taps, relation losses, the max–min loop, resume."""

from __future__ import annotations

import json

import pytest
import torch

from toolchain.artifacts import Store
from toolchain.core.errors import ConfigError
from toolchain.methods.checkpoint import Checkpointer
from toolchain.methods.features import match_nodes, stage_output_nodes, teacher_student_taps
from toolchain.methods.generators import DFADGenerator, upsample_plan
from toolchain.methods.loop import TrainLoop
from toolchain.methods.recipes import load_recipe
from toolchain.methods.config import build_config
from toolchain.methods.registry import get_method
from toolchain.methods.relation import (channel_relation, feature_discrepancy, relation_discrepancy,
                                        spatial_relation)
from toolchain.models.dynamic_batch import export_model
from toolchain.models.loader import load_model
from toolchain.models.registry import get_arch
from toolchain.pipeline import export_stage, load_stage, quantize_stage
from toolchain.quant.rewrite import fp_graph_module, quantize_graph
from toolchain.quant.scheme import QuantScheme

from helpers import method_ctx, recording_progress, run_method, tiny_state_dict_file

#: settings that make zaq take well under a second on tinynet
FAST_ZAQ = {"rounds": 3, "batch_size": 8, "calib_batches": 1, "checkpoint_every": 1, "log_every": 1}
#: the cpu recipe ends with reconstruction: a short one for pipeline runs
FAST_ZAQ_RECON = {**FAST_ZAQ, "recon.steps": "10", "recon.batch": "8", "recon.images": "16"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(tiny_state_dict_file(tmp_path_factory.mktemp("m")), arch="tinynet")


def run_zaq(lm, workdir=None, **settings):
    return run_method("zaq", lm, {**FAST_ZAQ, **settings}, workdir)


# ----------------------------------------------------------------------------- generator
@pytest.mark.parametrize("shape,plan", [((1, 8, 8), (2, 2, 2)), ((3, 32, 32), (8, 8, 2)),
                                        ((3, 224, 224), (7, 7, 5))])
def test_generator_output_shape(shape, plan):
    assert upsample_plan(*shape[1:]) == plan
    g = DFADGenerator(shape, nz=16, ngf=4).train()
    x = g(g.sample_latent(2))
    assert x.shape == (2, *shape) and x.dtype == torch.float32
    # last layer is BN(C, affine=False) on batch statistics: each channel ~ zero mean
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4


def test_published_generator_for_cifar():
    g = DFADGenerator((3, 32, 32))  # nz 256, 128 channels at 8x8, 2 upsamplings, 128 -> 64 -> 3
    assert g.fc.out_features == 128 * 8 * 8 and g.fc.in_features == 256
    convs = [m for m in g.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(128, 128), (128, 64), (64, 3)]
    assert not g.head[-1].affine


# ----------------------------------------------------------------------------- relation
def test_relation_transforms_shapes_and_hand_computed_case():
    f = torch.randn(2, 3, 4, 5)
    assert spatial_relation(f).shape == f.shape and channel_relation(f).shape == f.shape
    # one image, C = 2 channels, P = 2 positions: F = [[1, 0], [0, 1]] (rows are channels)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    e = torch.e
    # spatial: FᵀF = I → A = softmax rows [[e, 1], [1, e]] / (e + 1); F·Aᵀ = Aᵀ (A symmetric)
    a = torch.tensor([[e, 1.0], [1.0, e]]) / (e + 1)
    assert torch.allclose(spatial_relation(x).view(2, 2), 0.1 * a + torch.eye(2))
    # channel: E = I, max(E) − E = [[0, 1], [1, 0]] → A = [[1, e], [e, 1]] / (e + 1)
    b = torch.tensor([[1.0, e], [e, 1.0]]) / (e + 1)
    assert torch.allclose(channel_relation(x).view(2, 2), 0.1 * b + torch.eye(2))
    # the discrepancy is zero for equal maps, invariant to per-position scale (L2 norm over
    # channels), and positive otherwise
    f2 = torch.randn(2, 3, 4, 5)
    assert relation_discrepancy(f, f).item() == 0.0
    assert relation_discrepancy(f * 3.0, f).item() == pytest.approx(0.0, abs=1e-6)
    assert relation_discrepancy(f2, f).item() > 0
    d = [relation_discrepancy(f2, f).item(), relation_discrepancy(f, f2 * 0 + 1).item()]
    assert feature_discrepancy([f2, f], [f, f2 * 0 + 1]).item() == pytest.approx(sum(d), rel=1e-5)
    assert feature_discrepancy([f2, f], [f, f2 * 0 + 1], weights="adaptive").item() > sum(d) / 2


# ----------------------------------------------------------------------------- taps
def test_resnet20_taps_are_its_three_stage_outputs():
    torch.manual_seed(0)
    ep = export_model(get_arch("resnet20").builder(10, 3).eval(), (3, 32, 32))
    teacher = fp_graph_module(ep)
    nodes = stage_output_nodes(teacher)
    assert [tuple(n.meta["val"].shape[1:]) for n in nodes] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    qm = quantize_graph(ep, QuantScheme.from_bits(4))
    student = match_nodes(teacher, qm.gm, nodes)
    assert all(str(s.target).startswith("act_quant.") for s in student)  # the quantized tensors
    t_taps, s_taps = teacher_student_taps(teacher, qm.gm)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = qm(x)
        teacher(x)
        qm(x)
    assert [v.shape for v in t_taps.values()] == [v.shape for v in s_taps.values()]
    s_taps.remove()
    with torch.no_grad():
        assert torch.equal(qm(x), ref)
    assert not any(n.op == "call_module" and "feature_tap" in str(n.target) for n in qm.gm.graph.nodes)


def test_tinynet_taps(tiny):
    nodes = stage_output_nodes(fp_graph_module(tiny.program))
    assert [tuple(n.meta["val"].shape[2:]) for n in nodes] == [(8, 8), (4, 4)]


# ----------------------------------------------------------------------------- loop
def test_schedule_is_n_quantized_steps_then_one_generator_step(tiny, monkeypatch):
    steps = []
    monkeypatch.setattr(TrainLoop, "after_step", lambda self, player, r, losses: steps.append((player, r)))
    run_zaq(tiny, rounds=3, q_steps=4, checkpoint_every=0)
    assert [p for p, _ in steps] == (["q"] * 4 + ["g"]) * 3
    assert [r for _, r in steps] == [r for r in range(3) for _ in range(5)]


def test_zaq_changes_weights_and_logs_curves(tiny):
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in method_ctx(tiny).qmodel.state_dict().items()}
    method, ctx, qm = run_zaq(tiny, rounds=4, log_every=2)
    after = qm.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    curves = ctx.log["curves"]
    assert curves["round"] == [0, 2, 3]
    assert {"q_loss", "q_out", "q_feat", "g_loss", "g_act", "q_grad_norm", "q_grad_ratio", "g_grad_ratio"} <= set(curves)
    assert all(v > 0 for v in curves["q_grad_ratio"])
    assert ctx.log["feature_taps"]["fp"] == ["relu_2", "relu6"]
    for q in qm.act_quantizers().values():
        assert q.range() != (0.0, float(q.qmax))  # calibrated
        assert not q.scale.requires_grad
    assert not any("feature_tap" in n for n, _ in qm.named_modules())  # taps removed
    assert torch.isfinite(qm(torch.rand(4, 1, 8, 8) * 2 - 1)).all()


def test_scales_fixed_by_default_and_learned_on_request(tiny):
    def moved(ctx, qm):
        init = ctx.log["initial_ranges"]
        return [n for n, q in qm.act_quantizers().items() if n in init and
                abs(q.range()[1] - init[n][1]) > 1e-6 * max(1.0, abs(init[n][1]))]
    _, ctx, qm = run_zaq(tiny, rounds=2)
    assert moved(ctx, qm) == []
    _, ctx, qm = run_zaq(tiny, rounds=2, learn_act_scales=True, learn_weight_scales=True, scale_lr_ratio=1.0)
    assert moved(ctx, qm)


def test_config_is_validated():
    cls = get_method("zaq")
    for bad in ({"batch_size": 1}, {"feature_weights": "magic"}, {"calibration": "x"}, {"q_steps": 0},
                {"optimizer": "lion"}):
        with pytest.raises(ConfigError):
            build_config(cls.Config, bad)
    cpu, paper = (build_config(cls.Config, load_recipe("zaq", b)) for b in ("cpu", "paper"))
    assert paper.rounds == 300 * 60 and paper.student.batch_size == 256 and paper.q_steps == 5
    assert (paper.momentum, paper.weight_decay, paper.lr_g) == (0.9, 5e-4, 1e-3)
    assert cls.Config().student.optimizer == "sgd" and cls.Config().lr_q == 0.1  # the published optimizer
    # both recipes use Adam: SGD at the published lr collapses the BN-folded student (zaq.toml)
    assert (cpu.student.optimizer, paper.student.optimizer) == ("adam", "adam")
    assert cpu.rounds < paper.rounds


# ----------------------------------------------------------------------------- deviations
def test_deviations_are_off_by_default_and_in_neither_recipe_unless_said():
    cls = get_method("zaq")
    d = cls.Config()
    assert (d.bn_weight, d.warmup_rounds, d.q_refine_steps, d.student.bn_mode) == (0.0, 0, 0, "folded")
    paper = build_config(cls.Config, load_recipe("zaq", "paper"))
    assert (paper.bn_weight, paper.warmup_rounds, paper.q_refine_steps) == (0.0, 0, 0)


def test_generator_warmup_runs_before_the_game(tiny, monkeypatch):
    steps = []
    monkeypatch.setattr(TrainLoop, "after_step", lambda self, player, r, losses: steps.append(player))
    _, ctx, _ = run_zaq(tiny, rounds=2, q_steps=2, warmup_rounds=3, checkpoint_every=0)
    assert steps == ["g"] * 3 + (["q"] * 2 + ["g"]) * 2
    assert ctx.log["warmup_curves"]["round"] == [0, 1, 2]


def test_bn_term_and_refinement_read_the_bn_statistics(tiny, monkeypatch):
    import toolchain.methods.zaq as zaq
    calls = []
    real = zaq.match_bn_statistics
    monkeypatch.setattr(zaq, "match_bn_statistics", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    _, ctx, qm = run_zaq(tiny, rounds=2, q_steps=2, bn_weight=0.5, q_refine_steps=3)
    assert calls == [3] * 4  # every Q batch, 3 steps each
    assert "g_bn" in ctx.log["curves"] and all(v > 0 for v in ctx.log["curves"]["g_bn"])
    assert get_method("zaq")(build_config(get_method("zaq").Config, {"bn_weight": 0.1})).needs_synthetic_images
    assert not get_method("zaq")().needs_synthetic_images
    assert torch.isfinite(qm(torch.rand(4, 1, 8, 8) * 2 - 1)).all()


# ----------------------------------------------------------------------------- resume
def test_interrupted_run_resumes_to_the_same_result(tiny, tmp_path, monkeypatch):
    _, ref_ctx, ref = run_zaq(tiny, tmp_path / "ref", rounds=5, checkpoint_every=2)
    ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
    assert not (tmp_path / "ref" / "zaq.ckpt").exists()  # cleared when done

    class Interrupt(Exception):
        pass

    def boom(self, player, r, losses):
        if r == 3 and player == "q":
            raise Interrupt
    monkeypatch.setattr(TrainLoop, "after_step", boom)
    work = tmp_path / "run"
    with pytest.raises(Interrupt):
        run_zaq(tiny, work, rounds=5, checkpoint_every=2)
    assert (work / "zaq.ckpt").exists()
    monkeypatch.undo()
    # a different seed before the re-run: the checkpoint's RNG states must take over
    torch.manual_seed(123)
    _, ctx, resumed = run_zaq(tiny, work, rounds=5, checkpoint_every=2)
    assert ctx.log["resumed_from_round"] == 2
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    assert ctx.log["curves"] == ref_ctx.log["curves"]
    assert not (work / "zaq.ckpt").exists()


def test_checkpoint_with_other_settings_is_ignored(tmp_path):
    Checkpointer(tmp_path, "c.pt", fingerprint={"a": 1}).save({"x": torch.ones(1)})
    assert Checkpointer(tmp_path, "c.pt", fingerprint={"a": 2}).load() is None
    assert torch.equal(Checkpointer(tmp_path, "c.pt", fingerprint={"a": 1}).load()["x"], torch.ones(1))


# ----------------------------------------------------------------------------- pipeline
def test_zaq_through_the_pipeline_then_export(tmp_path):
    store = Store(tmp_path / "runs")
    fp = load_stage(tiny_state_dict_file(tmp_path), arch="tinynet", store=store)
    calls = []
    progress = recording_progress(calls)
    q = quantize_stage(fp, method="zaq", scheme=QuantScheme.from_bits(4), overrides=FAST_ZAQ_RECON, store=store,
                       progress=progress)
    log = json.loads((q.dir / "log.json").read_text())
    game = [f for d, f in calls if d.startswith("ZAQ:")]
    assert len(log["curves"]["round"]) == 3 and "lq" in game[-1] and "lg" in game[-1]
    assert log["reconstruction"]["kind"] == "adaround"  # the cpu recipe's last step
    assert not any((store.root / "work").rglob("zaq.ckpt"))
    onnx = export_stage(q, store=store)
    assert onnx.qdq_path.is_file()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        assert torch.isfinite(q.model()(x)).all()


def test_without_bn_reconstruction_runs_on_the_generators_images(tmp_path):
    """A model without BN has no statistics for a ZeroQ set: ZAQ (which needs none) is not refused
    and reconstructs on images of its final generator."""
    from test_architectures import NoBatchNorm, _program
    torch.manual_seed(0)
    path = tmp_path / "nobn.pt2"
    torch.export.save(_program(NoBatchNorm().eval()), path)
    store = Store(tmp_path / "runs")
    fp = load_stage(path, store=store)
    q = quantize_stage(fp, method="zaq", scheme=QuantScheme.from_bits(4), overrides=FAST_ZAQ_RECON, store=store)
    log = json.loads((q.dir / "log.json").read_text())
    assert log["reconstruction"]["blocks"] and "synth" not in {p.name for p in store.root.iterdir()}
    with pytest.raises(Exception, match="BatchNorm"):  # a deviation that reads BN statistics still needs them
        quantize_stage(fp, method="zaq", scheme=QuantScheme.from_bits(4),
                       overrides={**FAST_ZAQ_RECON, "bn_weight": "0.1"}, store=store)


def test_the_schedule_counts_the_feature_discrepancy(tiny):
    """The relation transforms cost more than an FP pass predicts (P×P per image): ZAQ times them
    and its round estimate adds one per Q and G step."""
    from toolchain.methods.schedule import probe_pass_seconds
    cls, teacher = get_method("zaq"), fp_graph_module(tiny.program).eval()
    pass_s = probe_pass_seconds(teacher, (1, 8, 8), torch.device("cpu"))
    costs = cls.probe_costs(teacher, (1, 8, 8), torch.device("cpu"), pass_s)
    assert costs["relation"] > 0
    cfg = build_config(cls.Config, {"rounds": 10, "q_steps": 4, "batch_size": 8})
    no_bn = lambda k, d: False  # noqa: E731
    plain, timed = (cls(cfg, c).phases(QuantScheme.from_bits(4), no_bn)[0] for c in ({}, costs))
    assert timed.cost == pytest.approx(plain.cost + 5 * costs["relation"])
