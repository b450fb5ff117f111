"""What of the machine can change a run's bits: the CPU, its vector extensions, XLA's flags.

XLA CPU compiles for the host's vector extensions (SSE4.2, AVX2, AVX-512, ...):
the same code, seed and versions gave different weights on two x86 machines,
and ``--xla_cpu_max_isa=SSE4_2`` alone changes the bits on one. Bitwise equality
is therefore a same-machine promise unless the instruction set is pinned:
``portable`` caps XLA CPU at AVX2, which most x86 machines of the last decade have.
On GPU, ``deterministic`` asks XLA for kernels that round the same way on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform

import jax
from jax._src import xla_bridge  # backends_are_initialized has no public name

from jaxseed.errors import UserError

PORTABLE_FLAG = "--xla_cpu_max_isa=AVX2"
# --xla_gpu_exclude_nondeterministic_ops would be stricter, but could not compile Flax's
# max-pool gradient (select-and-scatter); the CNN no longer uses it, untried on a GPU since.
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
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


def _require_flag(flag: str, option: str) -> None:
    """Add ``flag`` to XLA_FLAGS; XLA reads its flags when JAX starts its backends,
    so this must run before the first computation."""
    if flag in xla_flags().split():
        return
    if xla_bridge.backends_are_initialized():
        raise UserError(f"{option} must be set before JAX starts: run through the CLI with {option}, "
                        f"or set XLA_FLAGS={flag} in the environment")
    os.environ["XLA_FLAGS"] = f"{xla_flags()} {flag}".strip()


def require_flags(config) -> None:
    """Set the XLA flags the config asks for (``portable``, ``deterministic``) before JAX starts."""
    if config.portable:
        _require_flag(PORTABLE_FLAG, "--portable")
    if config.deterministic:
        _require_flag(DETERMINISTIC_FLAG, "--deterministic")


def use_compilation_cache() -> str | None:
    """Keep compiled programs on disk (JAX's persistent compilation cache), so a second run of
    the same shape starts without compiling; returns the folder, or None when turned off.

    ``$JAXSEED_COMPILATION_CACHE`` names the folder ("" turns it off); default
    ``~/.cache/jaxseed/xla`` (or under ``$XDG_CACHE_HOME``). XLA CPU compiles for the host's
    vector extensions, so each CPU model and set of XLA flags gets its own subfolder: a cache
    on a shared home folder never hands one machine's code to another. A cached program is the
    compiled program itself, so results are the same bits as with a fresh compile.
    """
    root = os.environ.get("JAXSEED_COMPILATION_CACHE")
    if root == "":
        return None
    root = root or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxseed", "xla")
    host = hashlib.sha256(json.dumps([cpu(), xla_flags()], sort_keys=True).encode()).hexdigest()[:16]
    folder = os.path.join(root, host)
    jax.config.update("jax_compilation_cache_dir", folder)
    # Every program, however quick to compile: building the model op by op compiles ~50 small
    # ones, ~2.5 s of a start-up otherwise.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return folder
