"""BN in the loop during fine-tuning, folded for deployment (``bn_mode = "qat"``, issue 18)."""

from __future__ import annotations

import pytest
import torch

from toolchain.core.errors import ConfigError
from toolchain.methods.config import build_config
from toolchain.methods.loop import Player, TrainLoop
from toolchain.methods.registry import get_method
from toolchain.methods.student import StudentBN, StudentConfig
from toolchain.models.loader import load_model
from toolchain.quant import bn_qat

from helpers import calibrate_minmax, method_ctx, run_method, tiny_state_dict_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(tiny_state_dict_file(tmp_path_factory.mktemp("m")), arch="tinynet")


def _images(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    blobs = torch.nn.functional.interpolate(torch.rand(n, 1, 3, 3, generator=g), size=8, mode="bilinear")
    return (blobs - 0.5) / 0.5


def _qmodel(tiny):
    qm = method_ctx(tiny).qmodel
    calibrate_minmax(qm, _images(32, seed=1))
    return qm.eval()


def _codes(qm):
    return {n: layer.weight_quant.int_repr(layer.weight) for n, layer in qm.layers().items()}


def test_attached_bn_starts_as_the_folded_layer(tiny):
    qm = _qmodel(tiny)
    x = _images()
    with torch.no_grad():
        before = qm(x)
    names = bn_qat.attach_bn_qat(qm.layers())
    folded = [n for n, layer in qm.layers().items() if hasattr(layer, "bn_std")]
    assert names == folded and names  # every layer whose BN was folded, not the classifier
    assert all(qm.layers()[n].bn_qat is None for n in qm.layers() if n not in names)
    with torch.no_grad():
        assert torch.allclose(qm(x), before, atol=1e-5)
    for n in names:
        assert torch.allclose(qm.layers()[n].bn_qat.fold_factor(), torch.ones(1), atol=1e-6)


def test_training_mode_normalizes_with_the_batch_statistics_and_updates_running_ones(tiny):
    qm = _qmodel(tiny)
    bn_qat.attach_bn_qat(qm.layers(), momentum=0.5)
    name, layer = next((n, m) for n, m in qm.layers().items() if m.bn_qat is not None)
    bn = layer.bn_qat
    x = torch.randn(16, *layer.weight.shape[1:2], 8, 8)
    mean0 = bn.running_mean.clone()
    layer.train()
    y = layer(x)
    dims = (0, 2, 3)
    # y = |γ|·(z − μ_B)/σ_B + β: per channel, the batch mean is β and the std |γ|
    assert torch.allclose(y.mean(dims), bn.bias.detach(), atol=1e-4)
    assert torch.allclose(y.var(dims, unbiased=False).sqrt(), bn.weight.detach(), rtol=1e-3)
    assert not torch.equal(bn.running_mean, mean0)
    bn.frozen.fill_(True)  # frozen: the deploy form, statistics no longer move
    mean1 = bn.running_mean.clone()
    layer(x)
    assert torch.equal(bn.running_mean, mean1)


def test_fold_exports_what_was_trained(tiny):
    """After training with BN in the loop, folding keeps the integer codes and the eval output."""
    torch.manual_seed(0)
    qm = _qmodel(tiny)
    bn_qat.attach_bn_qat(qm.layers(), momentum=0.3)
    params = [p for p in qm.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05)
    qm.train()
    for i in range(5):
        opt.zero_grad()
        qm(_images(16, seed=10 + i)).pow(2).mean().backward()
        opt.step()
    qm.eval()
    x = _images(8, seed=99)
    with torch.no_grad():
        trained = qm(x)
    codes = _codes(qm)
    factors = {n: m.bn_qat.fold_factor().detach().clone() for n, m in qm.layers().items() if m.bn_qat is not None}
    assert any(not torch.allclose(r, torch.ones_like(r)) for r in factors.values())  # the statistics moved
    assert bn_qat.fold_bn_qat(qm.layers()) == len(factors)
    assert all(m.bn_qat is None for m in qm.layers().values())
    with torch.no_grad():
        assert torch.allclose(qm(x), trained, atol=1e-4)
    assert all(torch.equal(c, codes[n]) for n, c in _codes(qm).items())


def test_student_bn_freezes_at_its_round_and_folds(tiny):
    qm = _qmodel(tiny)
    cfg = build_config(StudentConfig, {"bn_mode": "qat", "bn_freeze": 0.5})
    bn = StudentBN(qm, cfg, rounds=4)
    assert bn.freeze_round == 2 and bn.log() == {"mode": "qat", "layers": len(bn.layers), "freeze_round": 2}
    frozen_at = []

    def loss():
        return {"loss": qm(_images(8)).pow(2).mean()}
    params = [p for p in qm.parameters() if p.requires_grad]
    loop = TrainLoop([Player("q", loss, params, torch.optim.SGD(params, lr=0.01))], 4, {"q": qm},
                     hooks=[bn.on_round, lambda r: frozen_at.append(
                         bool(next(m for m in qm.layers().values() if m.bn_qat is not None).bn_qat.frozen))])
    qm.train()
    loop.run()
    assert frozen_at == [False, False, True, True]
    bn.fold()
    assert all(m.bn_qat is None for m in qm.layers().values())
    folded = StudentBN(_qmodel(tiny), build_config(StudentConfig, {}), rounds=4)
    assert folded.mode == "folded" and folded.layers == []  # the default leaves the model as it is


def test_bn_mode_is_validated():
    with pytest.raises(ConfigError):
        build_config(StudentConfig, {"bn_mode": "train"})
    with pytest.raises(ConfigError):
        build_config(StudentConfig, {"bn_freeze": 1.5})


@pytest.mark.parametrize("method,settings", [
    ("zaq", {"rounds": 4, "batch_size": 8, "calib_batches": 1, "checkpoint_every": 0}),
    ("gznq", {"num_images": 8, "iterations": 2, "synthesis.batch_size": 8, "student.batch_size": 8, "ft_steps": 4,
              "checkpoint_every": 0}),
    ("lrq", {"rounds": 4, "warmup_rounds": 1, "batch_size": 8, "calib_batches": 1, "calib_refine_steps": 0,
             "checkpoint_every": 0}),
])
def test_methods_train_with_bn_in_the_loop_and_return_the_folded_model(tiny, method, settings):
    _, ctx, qm = run_method(method, tiny, {**settings, "bn_mode": "qat", "bn_freeze": 0.5})
    assert ctx.log["student_bn"]["mode"] == "qat" and ctx.log["student_bn"]["layers"] > 0
    assert all(m.bn_qat is None for m in qm.layers().values())
    assert not any("bn_qat" in k for k in qm.state_dict())  # loads into a freshly rewritten model
    assert torch.isfinite(qm(_images(4))).all()


def test_interrupted_qat_run_resumes_to_the_same_result(tiny, tmp_path, monkeypatch):
    """The BN's parameters, running statistics and frozen flag are in the checkpoint."""
    settings = {"rounds": 5, "batch_size": 8, "calib_batches": 1, "checkpoint_every": 2, "bn_mode": "qat",
                "bn_freeze": 0.6}
    _, _, ref = run_method("zaq", tiny, settings, tmp_path / "ref")
    ref_state = {k: v.clone() for k, v in ref.state_dict().items()}

    class Interrupt(Exception):
        pass

    def boom(self, player, r, losses):
        if r == 4:  # after the freeze (round 3) and the checkpoint of round 4
            raise Interrupt
    monkeypatch.setattr(TrainLoop, "after_step", boom)
    with pytest.raises(Interrupt):
        run_method("zaq", tiny, settings, tmp_path / "run")
    monkeypatch.undo()
    _, ctx, resumed = run_method("zaq", tiny, settings, tmp_path / "run")
    assert ctx.log["resumed_from_round"] == 4
    for k, v in resumed.state_dict().items():
        assert torch.allclose(v, ref_state[k], atol=1e-6), k
