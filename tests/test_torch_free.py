"""The torch-free side: ``toolchain.core``, ``toolchain.data`` and ``toolchain.verify`` load without
torch and without the torch side of the package (``models/``, ``quant/``, ``methods/``, ``export/``)."""

import ast
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from toolchain import __version__
from toolchain.core.errors import ConfigError, ZqError
from toolchain.core.keys import KEY_LEN, canonical_json, content_key, file_sha256
from toolchain.core.meta import ONNX_META_PREFIX, ModelMeta

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "toolchain"
#: the packages the device runs, and the only toolchain modules they may import
TORCH_FREE = ("core", "data", "verify")
ALLOWED = {"toolchain", "toolchain.targets"} | {f"toolchain.{p}" for p in TORCH_FREE}
HEAVY = ("torch", "torchvision", "typer", "rich")
#: never imported by the torch-free sources, not even lazily (``rich`` is: optional, for tables)
NEVER = ("torch", "torchvision", "typer", "onnxsim")


def test_importing_the_torch_free_packages_loads_no_torch():
    code = ("import json, sys\n"
            "import toolchain.verify, toolchain.data, toolchain.core\n"
            "import toolchain.core.errors, toolchain.core.keys, toolchain.core.meta, toolchain.verify.device\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]
    ours = [m for m in loaded if m == "toolchain" or m.startswith("toolchain.")]
    outside = [m for m in ours if not any(m == a or m.startswith(a + ".") for a in ALLOWED)]
    assert outside == [], f"the torch-free packages load {outside}"
    assert "toolchain.core.meta" in ours and "toolchain.verify.runner" in ours


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a module of the toolchain package, lazy ones too."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            names = [f"{mod}.{a.name}" for a in node.names] if node.module is None else [mod]
            found += [(node.lineno, n) for n in names]
    return found


@pytest.mark.parametrize("package", TORCH_FREE)
def test_torch_free_sources_import_only_the_torch_free_side(package):
    """Also the imports inside functions, which an import test does not execute."""
    bad = []
    for path in sorted((PKG / package).rglob("*.py")):
        for line, mod in _imports(path):
            top = mod.split(".")[0]
            if top in NEVER or (
                    top == "toolchain" and not any(mod == a or mod.startswith(a + ".") for a in ALLOWED)):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    assert bad == []


def test_core_imports_only_the_standard_library():
    stdlib = set(sys.stdlib_module_names)
    for path in sorted((PKG / "core").glob("*.py")):
        for line, mod in _imports(path):
            top = mod.split(".")[0]
            assert top in stdlib or mod.startswith("toolchain.core") or mod == "toolchain.__version__", \
                f"{path.name}:{line} imports {mod}"


def test_content_key_hashes_the_canonical_json_with_the_version():
    payload = {"b": [1, 2.5], "a": {"y": None, "x": "s"}, "p": Path("/x")}
    body = json.dumps({"zqtool": __version__, **payload}, sort_keys=True, separators=(",", ":"), default=str)
    assert canonical_json({"zqtool": __version__, **payload}) == body
    key = content_key(payload)
    assert key == hashlib.sha256(body.encode()).hexdigest()[:KEY_LEN] and len(key) == 16
    assert content_key({**payload, "b": [1, 2.5, 0]}) != key
    assert content_key(dict(reversed(list(payload.items())))) == key  # key order does not matter


def test_file_sha256_streams_the_file(tmp_path):
    data = bytes(range(256)) * 5000
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f", chunk=1000) == hashlib.sha256(data).hexdigest()
    with pytest.raises(OSError):
        file_sha256(tmp_path / "missing")


def test_model_card_round_trips_through_dict_json_and_onnx_props():
    meta = ModelMeta(input_shape=(3, 32, 32), mean=(0.5,), std=(0.25, 0.5, 1.0), num_classes=10, resize=36,
                     arch="resnet20", source_sha256="ab", source_format="state_dict", task="segmentation")
    assert meta.mean == (0.5, 0.5, 0.5)
    assert ModelMeta.from_dict(meta.to_dict()) == meta
    assert ModelMeta.from_dict(json.loads(meta.to_json())) == meta
    props = meta.to_onnx_props()
    assert all(k.startswith(ONNX_META_PREFIX) for k in props)
    assert ModelMeta.from_onnx_props({**props, "other": "1"}) == meta


@pytest.mark.parametrize("kwargs, words", [
    (dict(input_shape=(3, 32)), "C,H,W"),
    (dict(mean=(0.1, 0.2)), "--mean has 2 values"),
    (dict(std=(0.0,)), "--std must be positive"),
    (dict(num_classes=0), "--num-classes must be >= 1"),
    (dict(task="detection"), "task must be one of"),
])
def test_model_card_refuses_bad_fields_with_one_line(kwargs, words):
    base = dict(input_shape=(3, 8, 8), mean=(0.5,), std=(0.5,), num_classes=4)
    with pytest.raises(ConfigError) as e:
        ModelMeta(**{**base, **kwargs})
    assert words in e.value.message and "\n" not in e.value.message
    assert isinstance(e.value, ZqError) and e.value.exit_code == 2


def test_package_docstring_example_calls_the_real_signatures():
    """The example in ``toolchain/__init__.py`` binds to the functions as they are (no stale keywords)."""
    import inspect
    import textwrap

    import toolchain
    from toolchain import pipeline
    from toolchain.quant.scheme import QuantScheme
    from toolchain.verify import verify

    block = []
    for line in toolchain.__doc__.split("::", 1)[1].splitlines()[1:]:
        if line.strip() and not line.startswith(" "):
            break
        block.append(line)
    code = textwrap.dedent("\n".join(block))
    funcs = {"load_stage": pipeline.load_stage, "quantize_stage": pipeline.quantize_stage,
             "export_stage": pipeline.export_stage, "from_bits": QuantScheme.from_bits, "verify": verify}
    seen = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id
            seen.add(name)
            # TypeError on a missing or stale argument
            inspect.signature(funcs[name]).bind(*node.args, **{k.arg: None for k in node.keywords})
    assert seen == set(funcs)
