"""examples/seed_table.py: the seed table of examples/seeds.sh (paired gaps, mean ± sample std)."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "seed_table.py"


@pytest.fixture(scope="module")
def seed_table():
    spec = importlib.util.spec_from_file_location("seed_table", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _report(folder: Path, method: str, seed: int, top1: float, bits: int = 4):
    (folder / f"{method}-w{bits}-seed{seed}.json").write_text(json.dumps({"quantized": {"top1": top1}}))


def test_paired_gaps_mean_and_sample_std(tmp_path, seed_table, capsys):
    for s, (a, b) in enumerate([(88.0, 90.0), (89.0, 90.0), (90.0, 93.0)]):
        _report(tmp_path, "bnstat", s, a)
        _report(tmp_path, "lrq", s, b)
    _report(tmp_path, "lrq", 7, 99.0)          # no bnstat report for seed 7: left out, named
    _report(tmp_path, "lrq", 0, 10.0, bits=3)  # another bit width: ignored
    seed_table.main([str(tmp_path), "4", "bnstat", "lrq"])
    out, err = capsys.readouterr()
    assert "| 0 | 88.00 | 90.00 | +2.00 |" in out
    assert "| 2 | 90.00 | 93.00 | +3.00 |" in out
    assert "| 7 |" not in out and "seed(s) [7]" in err
    # means 89 / 91, sample std 1.00 / 1.73; gaps 2, 1, 3 -> +2.00 ± 1.00
    assert "| mean ± sd (3 seeds) | 89.00 ± 1.00 | 91.00 ± 1.73 | +2.00 ± 1.00 |" in out


def test_no_common_seed_is_an_error(tmp_path, seed_table):
    _report(tmp_path, "lrq", 1, 90.0)
    with pytest.raises(SystemExit, match="no seed has a report for every method"):
        seed_table.main([str(tmp_path), "4", "bnstat", "lrq"])
