"""Method settings (toolchain.methods.config): one path recipe → overrides → frozen dataclass, checked
from field metadata with one error format; the shared method parts (training loop, sampler, context)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch

from toolchain.core.errors import ConfigError
from toolchain.methods.config import (Rule, Settings, SettingError, accepts, build_config, group, leaf_paths,
                                      parse_overrides, resolve_key, setting)
from toolchain.methods.generators import ConditionalGenerator, DFADGenerator, GeneratorSampler
from toolchain.methods.images import clamp_pixels, pixel_bounds
from toolchain.methods.loop import Player, TrainLoop
from toolchain.methods.recipes import load_recipe
from toolchain.methods.registry import MethodContext, get_method, list_methods, method_config
from toolchain.methods.synthesis import SynthesisConfig
from toolchain.quant.scheme import QuantScheme


@dataclass(frozen=True)
class Inner(Settings):
    size: int = setting(4, ge=2)
    mode: str = setting("a", choices=("a", "b"), aliases={"true": "a"})


@dataclass(frozen=True)
class Outer(Settings):
    steps: int = setting(10, ge=0)
    lr: float = setting(0.1, gt=0, lt=1)
    kernel: int = setting(3, odd=True)
    flag: bool = False
    inner: Inner = group(Inner, size=8)
    other: Inner = group(Inner)

    rules = (Rule("flag", lambda c: not (c.flag and c.steps == 0), "needs steps > 0"),)


def one_line(e: ConfigError) -> None:
    assert "\n" not in e.message and (e.hint is None or "\n" not in e.hint)


def test_leaf_paths_dotted_and_bare_keys():
    assert leaf_paths(Outer) == ("steps", "lr", "kernel", "flag", "inner.size", "inner.mode", "other.size",
                                 "other.mode")
    assert resolve_key(Outer, "steps") == "steps" and resolve_key(Outer, "inner.size") == "inner.size"
    assert accepts(Outer, "size") and accepts(Outer, "other.mode") and not accepts(Outer, "nope")
    cfg = build_config(Outer, {"steps": "5", "inner": {"size": "16"}}, {"other.mode": "b", "lr": "0.5"})
    assert (cfg.steps, cfg.lr, cfg.inner.size, cfg.inner.mode, cfg.other.size, cfg.other.mode) == (5, 0.5, 16, "a", 4, "b")
    assert build_config(Outer).inner.size == 8  # the group's own default


def test_later_layers_win_whatever_spelling():
    cls = get_method("bnstat")
    recipe = load_recipe("bnstat", "cpu")
    assert isinstance(recipe["synthesis"], dict)  # [cpu.synthesis] sub-table
    cfg = build_config(cls.Config, recipe, {"iterations": "7"})
    assert cfg.synthesis.iterations == 7 and cfg.synthesis.num_images == recipe["synthesis"]["num_images"]
    assert build_config(cls.Config, {"iterations": 3}, {"synthesis.iterations": 4}).synthesis.iterations == 4
    assert build_config(cls.Config, {"synthesis": {"iterations": 3}}, {"iterations": 5}).synthesis.iterations == 5


@pytest.mark.parametrize("values,key,problem", [
    ({"nope": 1}, "nope", "unknown setting"),
    ({"inner": {"nope": 1}}, "inner.nope", "unknown setting"),
    ({"size": 3}, "size", "ambiguous"),
    ({"steps": "many"}, "steps", "expects an int, got 'many'"),
    ({"steps": 2.5}, "steps", "expects an int"),
    ({"lr": "fast"}, "lr", "expects a number"),
    ({"flag": "maybe"}, "flag", "expects true or false"),
    ({"steps": -1}, "steps", "must be >= 0, got -1"),
    ({"lr": 0}, "lr", "must be > 0"),
    ({"lr": 1.0}, "lr", "must be < 1"),
    ({"lr": "nan"}, "lr", "must be > 0"),
    ({"kernel": 4}, "kernel", "must be odd, got 4"),
    ({"inner.size": 1}, "inner.size", "must be >= 2, got 1"),
    ({"other": {"mode": "c"}}, "other.mode", "must be one of a, b, got 'c'"),
    ({"flag": True, "steps": 0}, "flag", "needs steps > 0"),
    ({"steps": {"x": 1}}, "steps", "is a table"),
])
def test_every_bad_key_or_value_has_one_format(values, key, problem):
    with pytest.raises(SettingError) as e:
        build_config(Outer, values, owner="outer")
    assert e.value.key == key and problem in e.value.problem
    assert e.value.message.startswith(f"bad setting '{key}' for outer: ")
    one_line(e.value)


def test_hints_name_the_known_and_the_ambiguous_keys():
    with pytest.raises(SettingError) as e:
        build_config(Outer, {"nope": 1})
    assert "inner.size" in e.value.hint and "steps" in e.value.hint
    with pytest.raises(SettingError) as e:
        method_config("gznq", {"batch_size": 8})
    assert e.value.owner == "gznq" and "synthesis.batch_size" in e.value.hint and "student.batch_size" in e.value.hint


def test_direct_construction_is_checked_and_typed_the_same_way():
    assert Outer(steps="3").steps == 3 and Outer(kernel=5.0).kernel == 5 and isinstance(Outer(kernel=5.0).kernel, int)
    assert SynthesisConfig(lr=1).lr == 1.0
    assert isinstance(SynthesisConfig(lr=1).lr, float)  # an int widened for a float field
    assert Inner(mode=True).mode == "a"  # alias
    with pytest.raises(SettingError, match="bad setting 'batch_size' for SynthesisConfig: must be >= 2"):
        SynthesisConfig(batch_size=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Outer().steps = 3


@pytest.mark.parametrize("name", ["minmax", "bnstat", "gznq", "zaq", "lrq"])
@pytest.mark.parametrize("budget", ["cpu", "paper"])
def test_recipes_round_trip_through_asdict(name, budget):
    cls, cfg = method_config(name, load_recipe(name, budget))
    assert method_config(name, dataclasses.asdict(cfg))[1] == cfg
    assert hash(cfg) == hash(method_config(name, dataclasses.asdict(cfg))[1])  # frozen, hashable


def test_every_method_shares_the_student_and_synthesis_groups():
    for name in list_methods():
        paths = leaf_paths(get_method(name).Config)
        assert len(paths) == len(set(paths))
    assert get_method("gznq").Config().student.batch_size == 64
    assert get_method("zaq").Config().student.optimizer == "sgd"
    assert get_method("bnstat").Config().synthesis == SynthesisConfig()


def test_parse_overrides():
    assert parse_overrides(["a=1", " synthesis.iterations = 5"]) == {"a": "1", "synthesis.iterations": "5"}
    with pytest.raises(ConfigError, match="key=value") as e:
        parse_overrides(["a"])
    one_line(e.value)


# ----------------------------------------------------------------------------- shared parts
def test_context_freezes_the_teacher_and_copies_it_for_taps():
    teacher = torch.nn.Linear(3, 2).train()
    ctx = MethodContext(teacher=torch.fx.symbolic_trace(teacher), qmodel=None, meta=None,
                        scheme=QuantScheme.from_bits(8), device=torch.device("cpu"))
    assert not ctx.teacher.training and not any(p.requires_grad for p in ctx.teacher.parameters())
    copy = ctx.teacher_copy()
    assert copy is not ctx.teacher and not any(p.requires_grad for p in copy.parameters())


def test_one_player_loop_names_curves_by_key_and_drops_grads_even_when_stopped():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)
    calls = []

    def loss():
        v = (w ** 2).sum()
        return {"loss": v, "sq": v}
    loop = TrainLoop([Player("p", loss, [w], opt)], 3, {}, counter="step", log_every=1)

    class Task:
        def advance(self, n=1, **fields):
            calls.append(fields)
    curves = loop.run(Task())
    assert curves["step"] == [0, 1, 2] and len(curves["sq"]) == 3 and "p_sq" not in curves
    assert calls[0] == {"lsq": pytest.approx(2.0)} and w.grad is None

    def boom(self, player, r, losses):
        raise KeyboardInterrupt
    loop2 = TrainLoop([Player("a", loss, [w], opt), Player("b", loss, [w], opt, steps=2)], 2, {})
    loop2.after_step = boom.__get__(loop2)
    with pytest.raises(KeyboardInterrupt):
        loop2.run()
    assert w.grad is None
    with pytest.raises(ValueError):
        TrainLoop([], 1, {})


@pytest.mark.parametrize("conditional", [False, True])
def test_generator_sampler_clamps_into_the_pixel_range(conditional):
    torch.manual_seed(0)
    g = (ConditionalGenerator((1, 8, 8), 10, nz=8, ngf=4) if conditional else DFADGenerator((1, 8, 8), nz=8, ngf=4))
    bounds = pixel_bounds((0.5,), (0.25,))
    x, y = GeneratorSampler(g.train(), 4, None, bounds)(grad=False)
    assert x.shape == (4, 1, 8, 8) and not x.requires_grad
    assert x.min() >= bounds[0].min() and x.max() <= bounds[1].max()
    assert (y is not None) == conditional
    assert torch.equal(clamp_pixels(x, None), x)
