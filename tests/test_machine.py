"""CPU detection, the int16-pair-saturation rule and verify's warning (toolchain.targets, verify.machine)."""

from __future__ import annotations

import pytest

from toolchain.core.errors import ConfigError
from toolchain.quant.scheme import QuantScheme
from toolchain.targets import TARGETS, Target, is_depthwise, pair_sum_safe, safe_weight_bits
from toolchain.verify.machine import (CpuInfo, SaturationRisk, cpu_info, probe_int16_pair_saturation,
                                      saturation_warning)

EPYC_AVX2 = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7B12
flags		: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma bmi2
"""
XEON_VNNI = """processor	: 0
model name	: Intel(R) Xeon(R) Platinum 8480C
flags		: sse2 avx avx2 avx512f avx512bw avx512_vnni avx_vnni amx_tile amx_int8
"""
GRAVITON = """processor	: 0
BogoMIPS	: 243.75
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
"""


def _cpu(tmp_path, text, arch):
    p = tmp_path / "cpuinfo"
    p.write_text(text)
    return cpu_info(p, machine=arch)


def test_avx2_only_cpu_saturates_and_its_native_target_is_portable(tmp_path):
    cpu = _cpu(tmp_path, EPYC_AVX2, "x86_64")
    assert cpu.model == "AMD EPYC 7B12" and cpu.flags == ("avx2",) and cpu.source == "/proc/cpuinfo"
    assert cpu.int16_pair_saturation is True and cpu.native_target == "portable"


def test_vnni_cpu_is_exact_for_full_ranges(tmp_path):
    cpu = _cpu(tmp_path, XEON_VNNI, "x86_64")
    assert {"avx512_vnni", "avx_vnni", "amx_int8"} <= set(cpu.flags)
    assert cpu.int16_pair_saturation is False and cpu.native_target == "x86-vnni"
    assert cpu.to_dict()["native_target"] == "x86-vnni"


def test_arm64_cpu_reads_features_and_is_exact(tmp_path):
    cpu = _cpu(tmp_path, GRAVITON, "aarch64")
    assert "asimd" in cpu.flags and "asimddp" in cpu.flags
    assert cpu.int16_pair_saturation is False and cpu.native_target == "arm64"


def test_unreadable_flags_say_unknown(tmp_path):
    cpu = cpu_info(tmp_path / "missing", machine="x86_64")
    assert cpu.source in ("none", "sysctl") and cpu.int16_pair_saturation in (None, True, False)
    if cpu.source == "none":
        assert cpu.int16_pair_saturation is None and cpu.native_target == "portable"


def test_this_machine_is_described():
    cpu = cpu_info()
    assert cpu.arch and cpu.model
    assert probe_int16_pair_saturation() in (True, False)


def test_pair_sum_rule():
    assert not pair_sum_safe(255, 127) and pair_sum_safe(255, 63) and pair_sum_safe(127, 127)
    assert safe_weight_bits(8, 8) == 7 and safe_weight_bits(8, 7) == 8 and safe_weight_bits(4, 4) == 4
    assert safe_weight_bits(6, 8) == 6


def test_scheme_applies_the_target_rule():
    assert QuantScheme().target == "portable"
    assert QuantScheme().layer_bits(8, 8) == (7, 8)
    assert QuantScheme().layer_bits(8, 4) == (8, 4)
    assert QuantScheme(target="x86-vnni").layer_bits(8, 8) == (8, 8)
    assert QuantScheme(target="arm64").layer_bits(8, 8) == (8, 8)
    assert QuantScheme(4, 4).layer_bits(4, 4) == (4, 4)
    assert Target("t", "", True, narrow="act").layer_bits(8, 8) == (8, 7)
    assert QuantScheme().layer_bits(8, 8, depthwise=True) == (8, 8)  # MLAS's depthwise kernel is exact
    assert is_depthwise(32, 1, 32) and not is_depthwise(32, 4, 8) and not is_depthwise(1, 1, 1)
    assert set(TARGETS) == {"portable", "x86-vnni", "arm64"}
    with pytest.raises(ConfigError, match="unknown --target 'avx9'"):
        QuantScheme(target="avx9")


def test_warning_names_layers_and_the_fix_only_where_the_cpu_saturates():
    cpu = CpuInfo("AMD EPYC 7B12", "x86_64", ("avx2",), "/proc/cpuinfo")
    risks = [SaturationRisk(f"layer{i}", 255, 127, 64770) for i in range(6)]
    msg = saturation_warning(risks, True, cpu)
    assert "6 integer layer(s)" in msg and "layer0" in msg and "2 more" in msg and "--target portable" in msg
    assert "\n" not in msg
    assert saturation_warning(risks, False, cpu) is None
    assert saturation_warning([], True, cpu) is None
    assert saturation_warning(None, True, cpu) is None
