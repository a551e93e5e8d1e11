"""What this machine's CPU can do, read from /proc/cpuinfo (no TensorFlow import).

``train.precision: mixed_bfloat16`` is checked here before training: bfloat16 math is
fast only in hardware (a GPU, or a CPU with AVX512_BF16 or AMX-BF16). Elsewhere
TensorFlow either emulates it, slower than float32, or its oneDNN kernels refuse it in
the middle of the first epoch (seen with ``ONEDNN_MAX_CPU_ISA=AVX2`` on an AVX-512 CPU).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA) from which on it has bf16 instructions
_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10", "ALL")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags ("avx2", "avx512f", "amx_bf16", ...); empty if unknown."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bfloat16_problem(
    gpus: int, flags: set[str] | None = None, env: Mapping[str, str] | None = None
) -> str | None:
    """Why bfloat16 math would not run in hardware, or None when it would: with ``gpus``
    GPUs, on a CPU with these flags and this environment (default: this machine's)."""
    if gpus:
        return None
    flags = cpu_flags() if flags is None else flags
    env = os.environ if env is None else env
    if not any(f in flags for f in BF16_FLAGS):
        return "this CPU has no AVX512_BF16 or AMX-BF16 and there is no GPU"
    cap = env.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if cap and cap != "DEFAULT" and not cap.startswith(_BF16_ISAS):
        return f"ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN off the CPU's bf16 instructions"
    return None
