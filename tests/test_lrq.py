"""LRQ and its parts: the LKA block, the conditional generator, AMA's angular margin, decoupled KD,
the reused alternating loop (schedule, resume), the method through the CLI and the pipeline."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from toolchain.artifacts import Store
from toolchain.cli import app
from toolchain.core.errors import ConfigError, UnsupportedModelError
from toolchain.methods.distill import dkd_loss, dkd_objective, dkd_terms, kd_loss, make_optimizer
from toolchain.methods.generators import ConditionalGenerator, LargeKernelAttention
from toolchain.methods.loop import TrainLoop
from toolchain.methods.margin import ClassifierTap, add_angular_margin, classifier_node
from toolchain.methods.recipes import load_recipe
from toolchain.methods.config import build_config
from toolchain.methods.registry import get_method
from toolchain.models.dynamic_batch import export_model
from toolchain.models.loader import load_model
from toolchain.pipeline import export_stage, load_stage, quantize_stage
from toolchain.quant.rewrite import fp_graph_module
from toolchain.quant.scheme import QuantScheme

from helpers import method_ctx, recording_progress, run_method, tiny_npz, tiny_state_dict_file

#: settings that make lrq take well under a second on tinynet
FAST_LRQ = {"rounds": 3, "warmup_rounds": 2, "batch_size": 8, "nz": 16, "ngf": 8, "calib_batches": 1,
            "checkpoint_every": 1, "log_every": 1}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(tiny_state_dict_file(tmp_path_factory.mktemp("m")), arch="tinynet")


def run_lrq(lm, workdir=None, **settings):
    return run_method("lrq", lm, {**FAST_LRQ, **settings}, workdir)


# ----------------------------------------------------------------------------- LKA and generator
@pytest.mark.parametrize("sizes,width", [((5, 7, 3), 23), ((3, 5, 2), 11), ((1, 3, 1), 3)])
def test_lka_keeps_the_shape_and_sees_exactly_its_receptive_field(sizes, width):
    torch.manual_seed(0)
    lka = LargeKernelAttention(3, *sizes)
    assert lka.receptive_field == width
    x = torch.randn(2, 3, 41, 41, requires_grad=True)
    y = lka(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    y[0, 1, 20, 20].backward()
    g = x.grad[0].abs().sum(0)  # every input channel (the 1×1 conv mixes them)
    rows, cols = (g.sum(1) > 0).nonzero().flatten(), (g.sum(0) > 0).nonzero().flatten()
    half = width // 2
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20 - half, 20 + half, 20 - half, 20 + half)
    assert (g[20 - half:21 + half, 20 - half:21 + half] > 0).all()  # dense inside the window
    assert x.grad[1].abs().sum() == 0  # other images untouched


def test_lka_rejects_even_kernels():
    with pytest.raises(ConfigError, match="odd"):
        LargeKernelAttention(4, 4, 7, 3)


@pytest.mark.parametrize("lka", [True, False])
def test_conditional_generator(lka):
    torch.manual_seed(0)
    g = ConditionalGenerator((3, 32, 32), 10, lka=lka).train()  # GDFQ's CIFAR generator (+ LKA)
    assert g.embed.weight.shape == (10, 100) and g.fc.out_features == 128 * 8 * 8
    assert len([m for m in g.modules() if isinstance(m, LargeKernelAttention)]) == (2 if lka else 0)
    z, y = g.sample_latent(4), g.sample_labels(4)
    assert y.dtype == torch.int64 and ((0 <= y) & (y < 10)).all()
    x = g(z, y)
    assert x.shape == (4, 3, 32, 32)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4  # GDFQ's head: BN(C, affine=False)
    other = g(z, (y + 1) % 10)
    assert not torch.allclose(x, other)  # the label conditions the image
    assert ConditionalGenerator((1, 8, 8), 10, head="linear").head.__class__ is torch.nn.Conv2d
    with pytest.raises(ConfigError):
        ConditionalGenerator((1, 8, 8), 10, head="sigmoid")


# ----------------------------------------------------------------------------- AMA
def test_angular_margin_hand_computed():
    f = torch.tensor([[3.0, 4.0]])                      # ‖f‖ = 5
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])          # ‖W_0‖ = 1, ‖W_1‖ = 2
    b = torch.tensor([0.5, -1.0])
    y = torch.tensor([0])
    m = 0.5
    # cos θ_0 = 3/5, sin θ_0 = 4/5: target 5·1·(0.6·cos m − 0.8·sin m) + 0.5; the other f·W_1 + b_1 = 7
    expected = torch.tensor([[5 * (0.6 * math.cos(m) - 0.8 * math.sin(m)) + 0.5, 7.0]])
    assert torch.allclose(add_angular_margin(f, w, b, y, m), expected, atol=1e-6)
    assert torch.allclose(add_angular_margin(f, w, b, y, 0.0), f @ w.t() + b)  # m = 0: the FP logits
    # ArcFace's fixed scale s: s·cos θ everywhere, s·cos(θ_y + m) on the target (cos θ_1 = 8/10)
    expected = torch.tensor([[10 * (0.6 * math.cos(m) - 0.8 * math.sin(m)), 8.0]])
    assert torch.allclose(add_angular_margin(f, w, b, y, m, scale=10.0), expected, atol=1e-6)
    # beyond θ > π − m: ArcFace's monotone continuation cos θ − m·sin m (θ_0 = π here)
    f2 = torch.tensor([[-2.0, 0.0]])
    assert add_angular_margin(f2, w, None, y, m)[0, 0].item() == pytest.approx(2 * (-1 - m * math.sin(m)))
    # the margin only ever lowers the target logit (enlarges the angle) and leaves the rest
    torch.manual_seed(0)
    f3, w3, y3 = torch.randn(6, 5), torch.randn(4, 5), torch.randint(0, 4, (6,))
    plain, ama = f3 @ w3.t(), add_angular_margin(f3, w3, None, y3, 0.3)
    mask = torch.nn.functional.one_hot(y3, 4).bool()
    assert (ama[mask] < plain[mask]).all() and torch.equal(ama[~mask], plain[~mask])
    with pytest.raises(ValueError):
        add_angular_margin(f, w, b, y, 4.0)


def test_classifier_tap_finds_the_final_linear(tiny):
    teacher = fp_graph_module(tiny.program)
    tap = ClassifierTap(teacher)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        logits = teacher(x)
    y = logits.argmax(1)
    assert tap.features().shape == (4, tap.weight.shape[1]) and tap.weight.shape[0] == 10
    assert torch.allclose(tap.margin_logits(y, 0.0), logits, atol=1e-5)
    head = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    with pytest.raises(UnsupportedModelError, match="ama_margin = 0"):
        classifier_node(fp_graph_module(export_model(head, (1, 8, 8))))


# ----------------------------------------------------------------------------- DKD
def test_dkd_hand_computed_and_its_relation_to_kd():
    s = torch.zeros(1, 3)                                  # p^S = (1/3, 1/3, 1/3)
    t = torch.log(torch.tensor([[2.0, 2.0, 1.0]]))         # p^T = (0.4, 0.4, 0.2)
    y = torch.tensor([0])
    # b^T = (0.4, 0.6), b^S = (1/3, 2/3); p̂^T = (2/3, 1/3), p̂^S = (1/2, 1/2) over classes 1, 2
    tckd = 0.4 * math.log(0.4 * 3) + 0.6 * math.log(0.6 * 1.5)
    nckd = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    tc, nc, pt = dkd_terms(s, t, y, 1.0)
    assert (tc.item(), nc.item(), pt.item()) == pytest.approx((tckd, nckd, 0.4), rel=1e-5)
    assert dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=1.0).item() == pytest.approx(tckd + 8 * nckd, rel=1e-5)
    # temperature: logits ×T at temperature T give T² times the T = 1 value
    assert dkd_loss(2 * s, 2 * t, y, 1.0, 8.0, 2.0).item() == pytest.approx(4 * (tckd + 8 * nckd), rel=1e-5)
    # KD = TCKD + (1 − p_t^T)·NCKD (DKD's eq. 7): with β = 1 − p_t^T, DKD is KD
    assert kd_loss(s, t).item() == pytest.approx(tckd + 0.6 * nckd, rel=1e-5)
    torch.manual_seed(0)
    s, t, y = torch.randn(16, 10), 3 * torch.randn(16, 10), torch.randint(0, 10, (16,))
    tc, nc, pt = dkd_terms(s, t, y, 4.0)
    assert (tc + (1 - pt) * nc).mean().item() == pytest.approx(kd_loss(s, t, 4.0).item(), rel=1e-5)
    # both parts vanish when the student equals the teacher, and only the student gets gradients
    assert dkd_loss(t, t, y).item() == pytest.approx(0.0, abs=1e-6)
    s.requires_grad_(True)
    dkd_loss(s, t, y).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    # the objective: target = the label, or the teacher's top-1; + CE to the label on request
    out = dkd_objective(1.0, 8.0, 4.0, ce_weight=0.5)(s, t, y)
    assert set(out) == {"loss", "tckd", "nckd", "ce"}
    by_teacher = dkd_objective(1.0, 8.0, 4.0, target="teacher")(s, t, y)["loss"]
    assert by_teacher.item() == pytest.approx(dkd_loss(s, t, t.argmax(1)).item(), rel=1e-6)
    with pytest.raises(ConfigError):
        dkd_objective(target="oracle")
    with pytest.raises(ValueError):
        dkd_terms(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.int64))


def test_make_optimizer_nesterov_and_groups():
    p, q = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    opt, sched = make_optimizer([{"params": [p]}, {"params": [q], "lr": 0.5}], "sgd", 0.1, 10, nesterov=True)
    assert opt.param_groups[0]["nesterov"] and [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    opt, _ = make_optimizer([p], "adam", 1e-3, 10, betas=(0.5, 0.999))
    assert opt.param_groups[0]["betas"] == (0.5, 0.999)
    with pytest.raises(ConfigError):
        make_optimizer([p], "sgd", 0.1, 10, momentum=0.0, nesterov=True)


# ----------------------------------------------------------------------------- the method
def test_schedule_is_warmup_then_n_quantized_steps_and_the_generator_steps(tiny, monkeypatch):
    steps = []
    monkeypatch.setattr(TrainLoop, "after_step", lambda self, player, r, losses: steps.append(player))
    run_lrq(tiny, warmup_rounds=2, rounds=3, q_steps=3, g_steps=2, checkpoint_every=0)
    assert steps == ["g"] * 4 + (["q"] * 3 + ["g"] * 2) * 3


def test_lrq_calibrates_trains_and_logs(tiny):
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in method_ctx(tiny).qmodel.state_dict().items()}
    method, ctx, qm = run_lrq(tiny, rounds=4, log_every=2)
    after = qm.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    curves = ctx.log["curves"]
    assert curves["round"] == [0, 2, 3] and len(ctx.log["warmup_curves"]["round"]) == 2
    assert {"q_loss", "q_tckd", "q_nckd", "g_loss", "g_ce", "g_bn", "g_acc"} <= set(curves)
    assert ctx.log["ama"] == {"classifier": "linear"}
    for q in qm.act_quantizers().values():
        assert q.range() != (0.0, float(q.qmax))  # calibrated
        assert not q.scale.requires_grad
    assert torch.isfinite(qm(torch.rand(4, 1, 8, 8) * 2 - 1)).all()


def test_ablation_switches(tiny):
    method, ctx, _ = run_lrq(tiny, lka=False, ama_margin=0.0, distill="kd", ce_weight=0.5, rounds=1)
    assert ctx.log["ama"] is None
    assert {"q_kd", "q_ce"} <= set(ctx.log["curves"]) and "q_tckd" not in ctx.log["curves"]
    # lka off: the generator is GDFQ's plain one (checked through the checkpointed modules)
    gen = method.game.modules["generator"]
    assert not any(isinstance(m, LargeKernelAttention) for m in gen.modules())
    method, _, _ = run_lrq(tiny, rounds=1, lka_kernel=3, lka_dilated_kernel=5, lka_dilation=2)
    assert [m.receptive_field for m in method.game.modules["generator"].modules()
            if isinstance(m, LargeKernelAttention)] == [11, 11]


def test_calibration_batches_are_refined_toward_the_bn_statistics_on_request(tiny, monkeypatch):
    import toolchain.methods.lrq as lrq_module
    seen = {}
    real_refine, real_calibrate = lrq_module.match_bn_statistics, lrq_module.calibrate_student

    def refine(teacher, bn, x, steps, lr, loss, bounds, progress):
        def bn_loss(images):
            with torch.no_grad():
                teacher(images)
                return bn.loss(loss).item()
        out = real_refine(teacher, bn, x, steps, lr, loss, bounds, progress)
        seen.setdefault("bn", []).append((bn_loss(x), bn_loss(out)))
        assert bounds is not None and (out >= bounds[0] - 1e-6).all() and (out <= bounds[1] + 1e-6).all()
        assert steps == 20 and lr == 0.1 and progress is not None  # the method's progress task
        return out

    def calibrate(ctx, batches, *args, **kwargs):
        seen["calibrated_on"] = batches
        return real_calibrate(ctx, batches, *args, **kwargs)
    monkeypatch.setattr(lrq_module, "match_bn_statistics", refine)
    monkeypatch.setattr(lrq_module, "calibrate_student", calibrate)
    run_lrq(tiny, rounds=1, calib_batches=2, calib_refine_steps=20, calib_refine_lr=0.1)
    assert len(seen["bn"]) == 2 and all(after < before for before, after in seen["bn"])
    assert len(seen["calibrated_on"]) == 2
    seen.clear()
    run_lrq(tiny, rounds=1, calib_batches=2)  # off by default: calibration on the generator's images
    assert "bn" not in seen and len(seen["calibrated_on"]) == 2


def test_quantized_model_batches_are_refined_toward_the_bn_statistics_on_request(tiny, monkeypatch):
    import toolchain.methods.lrq as lrq_module
    real_refine, seen = lrq_module.match_bn_statistics, []

    def refine(teacher, bn, x, steps, lr, loss, bounds, progress=None):
        out = real_refine(teacher, bn, x, steps, lr, loss, bounds, progress)
        def bn_loss(images):
            with torch.no_grad():
                teacher(images)
                return bn.loss(loss).item()
        if progress is None:  # a Q batch (the calibration batches report progress)
            seen.append((steps, lr, tuple(x.shape), [bn_loss(x), bn_loss(out)]))
        return out
    monkeypatch.setattr(lrq_module, "match_bn_statistics", refine)
    run_lrq(tiny, rounds=2, q_steps=2, q_refine_steps=15, calib_refine_lr=0.1)
    assert len(seen) == 4  # every Q step of every round
    assert all(s[:3] == (15, 0.1, (8, 1, 8, 8)) and s[3][1] < s[3][0] for s in seen)
    seen.clear()
    run_lrq(tiny, rounds=2, q_steps=2)  # off by default
    assert seen == []


def test_scales_fixed_by_default_and_learned_on_request(tiny):
    def moved(ctx, qm):
        init = ctx.log["initial_ranges"]
        return [n for n, q in qm.act_quantizers().items() if n in init and
                abs(q.range()[1] - init[n][1]) > 1e-6 * max(1.0, abs(init[n][1]))]
    _, ctx, qm = run_lrq(tiny, rounds=2)
    assert moved(ctx, qm) == []
    _, ctx, qm = run_lrq(tiny, rounds=2, learn_act_scales=True, learn_weight_scales=True, lr_q=1e-2)
    assert moved(ctx, qm)
    assert not any(q.scale.requires_grad for q in qm.quantizers())


def test_config_is_validated_and_recipes_load():
    cls = get_method("lrq")
    for bad in ({"batch_size": 1}, {"q_steps": 0}, {"lka_kernel": 4}, {"lka_dilation": 0},
                {"ama_margin": -0.1}, {"ama_margin": 3.5}, {"distill": "fitnet"}, {"dkd_target": "x"},
                {"optimizer": "rmsprop"}, {"bn_loss": "l1"}, {"g_head": "x"}, {"lr_q": 0},
                {"optimizer": "sgd", "momentum": 0.0}, {"calibration": "x"}, {"temperature": 0},
                {"calib_refine_steps": -1}, {"calib_refine_lr": 0.0}, {"q_refine_steps": -1}):
        with pytest.raises(ConfigError):
            build_config(cls.Config, bad)
    cpu, paper = (build_config(cls.Config, load_recipe("lrq", b)) for b in ("cpu", "paper"))
    assert paper.rounds == 400 * 200 and paper.warmup_rounds == 4 * 200 and paper.student.batch_size == 200
    assert (paper.nz, paper.bn_weight, paper.lka_kernel, paper.lka_dilated_kernel, paper.lka_dilation) == \
        (100, 0.1, 5, 7, 3)
    assert cpu.rounds < paper.rounds and cpu.student.optimizer == "adam" and cpu.lr_q <= 1e-4
    for c in (cpu, paper):
        assert c.lka and c.ama_margin > 0 and c.distill == "dkd"
    assert build_config(cls.Config, {"lka": "false", "ama_margin": "0.0", "distill": "kd"}).lka is False


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("stop_at", [3, 7, 8], ids=["in-warmup", "before-first-game-checkpoint", "in-game"])
def test_interrupted_run_resumes_to_the_same_result(tiny, tmp_path, monkeypatch, stop_at):
    settings = {"rounds": 4, "warmup_rounds": 3, "checkpoint_every": 2}
    _, ref_ctx, ref = run_lrq(tiny, tmp_path / "ref", **settings)
    ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
    assert not any((tmp_path / "ref").glob("*.ckpt"))  # cleared when done

    class Interrupt(Exception):
        pass
    count = []

    # steps: warm-up g g g (checkpoint after round 2 and at its end) | game q g | q g (checkpoint) | q g | q g
    def boom(self, player, r, losses):
        count.append(player)
        if len(count) == stop_at:
            raise Interrupt
    monkeypatch.setattr(TrainLoop, "after_step", boom)
    work = tmp_path / "run"
    with pytest.raises(Interrupt):
        run_lrq(tiny, work, **settings)
    assert any(work.glob("*.ckpt"))
    monkeypatch.undo()
    torch.manual_seed(123)  # the checkpoint's RNG states must take over
    _, ctx, resumed = run_lrq(tiny, work, **settings)
    assert ("resumed_from_round" in ctx.log) == (stop_at == 8)
    assert ctx.log.get("resumed_from_warmup_round") == {3: 2, 7: 3, 8: None}[stop_at]
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    assert ctx.log["curves"] == ref_ctx.log["curves"]
    assert not any(work.glob("*.ckpt"))


# ----------------------------------------------------------------------------- end to end
def test_lrq_through_the_pipeline_then_export(tmp_path):
    store = Store(tmp_path / "runs")
    fp = load_stage(tiny_state_dict_file(tmp_path), arch="tinynet", store=store)
    calls = []
    progress = recording_progress(calls)
    q = quantize_stage(fp, method="lrq", scheme=QuantScheme.from_bits(4), overrides=FAST_LRQ, store=store,
                       progress=progress)
    log = json.loads((q.dir / "log.json").read_text())
    assert len(log["curves"]["round"]) == 3
    assert any("warm-up" in d and "lg" in f for d, f in calls)
    assert "lq" in calls[-1][1] and "lg" in calls[-1][1]
    assert not any((store.root / "work").rglob("*.ckpt"))
    onnx = export_stage(q, store=store)
    assert onnx.qdq_path.is_file()


def test_cli_run_with_lrq(tmp_path):
    model, data = tiny_state_dict_file(tmp_path), tiny_npz(tmp_path)
    report = tmp_path / "r.json"
    args = ["run", model, "--arch", "tinynet", "--data", data, "--method", "lrq", "--bits", "4",
            "--latency-runs", "2", "--json", report, "--out", tmp_path / "runs"]
    for k, v in FAST_LRQ.items():
        args += ["--set", f"{k}={v}"]
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    rep = json.loads(report.read_text())
    assert rep["quantize"]["method"] == "lrq" and 0.0 <= rep["quantized"]["top1"] <= 100.0
