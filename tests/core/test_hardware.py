"""pipeline.core.hardware: CPU flags and where bfloat16 math runs in hardware."""

import pytest

from pipeline.core.hardware import bfloat16_problem, cpu_flags

ZEN4 = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}  # AMD EPYC (Zen 4)
SAPPHIRE = {"avx2", "avx512f", "amx_bf16", "amx_tile"}  # Xeon with AMX
AVX2 = {"avx2", "fma"}
SKYLAKE = {"avx2", "avx512f"}  # AVX-512 without bf16: oneDNN would emulate it


def test_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\nbugs\t\t: x\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()
    assert "sse2" in cpu_flags() or not cpu_flags()  # this machine (x86) or unknown


@pytest.mark.parametrize(
    ("flags", "env", "gpus", "problem"),
    [
        (ZEN4, {}, 0, None),
        (SAPPHIRE, {}, 0, None),
        (AVX2, {}, 1, None),  # the GPU does the math
        (AVX2, {}, 0, "no AVX512_BF16 or AMX-BF16"),
        (SKYLAKE, {}, 0, "no AVX512_BF16 or AMX-BF16"),
        (ZEN4, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, 0, "ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN off"),
        (ZEN4, {"ONEDNN_MAX_CPU_ISA": "avx512_core"}, 0, "ONEDNN_MAX_CPU_ISA=AVX512_CORE"),
        (ZEN4, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, 0, None),
        (SAPPHIRE, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, 0, None),
        (ZEN4, {"ONEDNN_MAX_CPU_ISA": "ALL"}, 0, None),
    ],
)
def test_bfloat16_runs_in_hardware_only(flags, env, gpus, problem):
    found = bfloat16_problem(gpus, flags=flags, env=env)
    assert found is None if problem is None else problem in found
