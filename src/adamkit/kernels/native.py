"""Which build of the kernel module this process runs, and the per-CPU choices it makes.

The package ships one module per x86-64 level (``_adam_x86_64``, ``_adam_avx2``,
``_adam_avx512``, ``_adam_avx512bf16``; ``_adam_generic`` elsewhere), compiled when the package was
built. The best one the CPU supports is imported; ``ADAMKIT_ISA`` (``x86_64``, ``avx2``, ``avx512``,
``avx512bf16``) asks for a lower
one, to measure or check it on a CPU that has more. Without a shipped module for this CPU (or
with ``ADAMKIT_ISA=native``), the same sources are compiled for it with ``-march=native`` on
first use (:mod:`adamkit.kernels.build`).
"""

from __future__ import annotations

import functools
import importlib
import os
import platform
from types import ModuleType

from .native_build import ISAS

__all__ = ["cpu_flags", "cpu_vendor", "supported_isas", "prebuilt_module", "prefetch", "ISA_ENV", "PREFETCH_ENV"]

ISA_ENV = "ADAMKIT_ISA"
PREFETCH_ENV = "ADAMKIT_PREFETCH"
# What GCC's -march=x86-64-v3 / -v4 may emit (lzcnt is "abm" in /proc/cpuinfo).
_V3 = {"avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe", "abm", "xsave"}
_V4 = _V3 | {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}
_REQUIRES = {"x86_64": frozenset(), "avx2": _V3, "avx512": _V4, "avx512bf16": _V4 | {"avx512_bf16"}}  # each shipped level


@functools.lru_cache(maxsize=None)
def _cpuinfo() -> tuple[frozenset[str], str]:
    flags: frozenset[str] = frozenset()
    vendor = ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
                elif key == "vendor_id" and not vendor:
                    vendor = value.strip()
                if flags and vendor:
                    break
    except OSError:
        pass
    return flags, vendor


def cpu_flags() -> frozenset[str]:
    return _cpuinfo()[0]


def cpu_vendor() -> str:
    return _cpuinfo()[1]


def supported_isas() -> list[str]:
    """The shipped levels this CPU runs, best first (``ADAMKIT_ISA`` caps it)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ["generic"]
    flags = cpu_flags()
    levels = [isa for isa in ISAS if _REQUIRES[isa] <= flags]
    requested = os.environ.get(ISA_ENV)
    if requested:
        if requested not in (*ISAS, "native"):
            raise ValueError(f"Invalid {ISA_ENV}: {requested!r}; expected {', '.join(ISAS)} or native")
        if requested == "native":  # no shipped build: compile one for this CPU (as on a platform the package lacks)
            return []
        levels = levels[: levels.index(requested) + 1] if requested in levels else levels
    return levels[::-1]


def prebuilt_module() -> ModuleType | None:
    """The best shipped kernel module this CPU runs, or None (then build.py compiles one)."""
    for isa in supported_isas():
        try:
            return importlib.import_module(f"adamkit.kernels._adam_{isa}")
        except ImportError:
            continue
    return None


def prefetch() -> bool:
    """Whether the fp32 kernel prefetches ahead on this CPU (``ADAMKIT_PREFETCH=0/1`` overrides).

    Measured side by side on GPT-2 shapes (benchmarks/RESULTS.md): 768 bytes ahead brought an
    Intel Xeon from 1.07-1.09x to 1.01-1.03x the bytes-only floor; on an AMD EPYC (Zen 4) the
    same prefetch made the kernel slower, so there it runs without.
    """
    setting = os.environ.get(PREFETCH_ENV)
    if setting is not None:
        return setting not in ("0", "", "false", "no")
    return cpu_vendor() != "AuthenticAMD"
