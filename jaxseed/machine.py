"""What of the machine can change a run's bits: the CPU, its vector extensions, XLA's flags.

XLA CPU compiles for the host's vector extensions (SSE4.2, AVX2, AVX-512, ...):
the same code, seed and versions gave different weights on two x86 machines,
and ``--xla_cpu_max_isa=SSE4_2`` alone changes the bits on one. Bitwise equality
is therefore a same-machine promise unless the instruction set is pinned:
``portable`` caps XLA CPU at AVX2, which most x86 machines of the last decade have.
"""

from __future__ import annotations

import os
import platform

from jax._src import xla_bridge  # backends_are_initialized has no public name

from jaxseed.errors import UserError

PORTABLE_FLAG = "--xla_cpu_max_isa=AVX2"
# The /proc/cpuinfo flags that decide which code XLA CPU can generate.
VECTOR_EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                     "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16")


def cpu() -> dict:
    """{"model", "architecture", "vector_extensions"} of this machine's CPU."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())  # the first core's
    except OSError:  # not Linux: the model from platform, the extensions unknown
        pass
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return {"model": fields.get("model name") or platform.processor() or None, "architecture": platform.machine(),
            "vector_extensions": [name for name in VECTOR_EXTENSIONS if name in flags]}


def xla_flags() -> str:
    return os.environ.get("XLA_FLAGS", "")


def require_portable(portable: bool) -> None:
    """Pin XLA CPU's instruction set when ``portable``; XLA reads its flags when JAX
    starts its backends, so this must run before the first computation."""
    if not portable or PORTABLE_FLAG in xla_flags().split():
        return
    if xla_bridge.backends_are_initialized():
        raise UserError(f"portable mode must be set before JAX starts: run through the CLI with --portable, "
                        f"or set XLA_FLAGS={PORTABLE_FLAG} in the environment")
    os.environ["XLA_FLAGS"] = f"{xla_flags()} {PORTABLE_FLAG}".strip()
