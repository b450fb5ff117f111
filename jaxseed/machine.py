"""What of the machine can change a run's bits: the CPU, its vector extensions, XLA's flags.

XLA CPU compiles for the host's vector extensions (SSE4.2, AVX2, AVX-512, ...):
the same code, seed and versions gave different weights on two x86 machines,
and ``--xla_cpu_max_isa=SSE4_2`` alone changes the bits on one. Its kernel library
for dots and convolutions also picks kernels from the CPU it finds at run time,
whatever the cap, and LLVM tunes XLA's code for the CPU it is named after. ``portable``
pins all three: XLA's code at AVX, for a CPU named after that cap on every x86 CPU with
AVX2 (which most machines of the last decade have), and the library's arithmetic at what
XLA calls consistent across CPUs (``--xla_cpu_enable_platform_dependent_math=false``).
On GPU, ``deterministic`` asks XLA for kernels that round the same way on every run.

Every run, whatever it asks, also fixes two things of XLA CPU's: its thread pool (``cpu_threads``;
the kernels split their sums by it, so it would otherwise follow the cores), and which fusions go to
YNNPACK: never a reduction (they race on two or more threads in jaxlib 0.10.2); dots only, or with
``portable`` elementwise fusions too (``YNN_FUSIONS``). A process it sets up also keeps glibc to two
heaps for its threads: memory only (``_limit_malloc_arenas``).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import re
import sys

import jax
from jax._src import xla_bridge  # backends_are_initialized has no public name
from jax.experimental.compilation_cache import compilation_cache

from jaxseed.errors import UserError

# Measured under qemu-user (issue 18): the cap alone left every matmul and convolution gradient of
# the models on another CPU's bits; with the second flag the CNN matched, and the VAE's kernel gradients
# needed jaxseed.portable besides. The cap is AVX, not AVX2: XLA names the CPU it compiles for after
# the cap only where the cap removes a feature, else after the host (llvm::sys::getHostCPUName), and
# LLVM's tuning for "skylake" gave other bits than for "haswell" (an emulated Haswell given Skylake's
# model number computed what the emulated Skylake did). AVX removes AVX2 on every CPU that has it.
PORTABLE_FLAGS = ("--xla_cpu_max_isa=AVX", "--xla_cpu_enable_platform_dependent_math=false")
# --xla_gpu_exclude_nondeterministic_ops would be stricter, but could not compile Flax's
# max-pool gradient (select-and-scatter); the CNN no longer uses it, untried on a GPU since.
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
# YNNPACK fusions. Its reduce fusions (on by default in jaxlib 0.10.2) gave wrong sums, different from call
# to call, on 2 threads: jnp.sum(jnp.broadcast_to(jnp.ones((1024, 1)), (2, 1024, 1024))) jitted returned up to
# 3% too much (a race in its partial reductions: XNNPACK PR #11243), so no run has them. Its elementwise
# fusions take the convolutions along (with their bias and ReLU): the CNN's step took 120 ms there against
# 63 ms with XLA's own convolutions (AMD EPYC Zen 3, benchmarks/profile_step.py), so a run keeps only the dot
# fusions. --portable keeps the elementwise ones: with XLA's own convolutions its CNN step gave other bits on
# an emulated Haswell (their code differs by CPU), in YNNPACK the same. A user's XLA_FLAGS naming fusion
# types keeps its own.
YNN_FUSION_TYPE = "--xla_cpu_experimental_ynn_fusion_type"
YNN_FUSIONS = f"{YNN_FUSION_TYPE}=dot"
PORTABLE_YNN_FUSIONS = f"{YNN_FUSION_TYPE}=-reduce"
# The values XLA accepts: fusion types named alone, or each with a sign; a bad one aborts the process.
_FUSION_TYPES = re.compile(rf"{YNN_FUSION_TYPE}=((dot|eltwise|reduce)(,(dot|eltwise|reduce))*"
                           rf"|[+-](dot|eltwise|reduce)(,[+-](dot|eltwise|reduce))*)?")
# XLA CPU sizes its intra-op pool as PJRT_NPROC, else NPROC, else the cores the process may run on
# (xla/pjrt/utils.cc DefaultThreadPoolSize), and at least the number of CPU devices; Eigen's
# contractions and YNNPACK split their sums by it, so a pool that follows the cores gave other
# bits on 1 and 2 of them. The variable is undocumented: thread_pool() checks what is in force.
POOL_VARIABLE = "PJRT_NPROC"
# The pool's threads, as Linux names them (/proc/self/task/*/comm) in jaxlib 0.10.2.
POOL_THREAD_NAME = "tf_XLAEigen"
# The /proc/cpuinfo flags that decide which code XLA CPU can generate.
VECTOR_EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                     "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16")


def cpu() -> dict:
    """{"model", "architecture", "vector_extensions", "cpuid_features", "cores"} of this machine's
    CPU; ``cores`` counts those this process may run on (``usable_cores``)."""
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
            "vector_extensions": [name for name in VECTOR_EXTENSIONS if name in flags],
            "cpuid_features": runtime_cpu_features(), "cores": usable_cores()}


def same_cpu(a: dict, b: dict) -> bool:
    """Whether two ``cpu()`` records name the same CPU, whatever cores each process had (records
    from before cores were recorded have none)."""
    return {**a, "cores": None} == {**b, "cores": None}


def usable_cores() -> int:
    """The cores this process may run on (its affinity, as ``taskset`` sets it). With ``--cpu-threads 0``
    XLA CPU's thread pool follows them, and so do the bits: a run pinned to 1 of 2 cores gave another
    param_hash, --portable or not, when YNNPACK's reductions were on (AMD EPYC, AVX2); with a fixed
    pool, the same. Today's --portable's do not follow the pool (``pool_free``)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def xla_flags() -> str:
    return os.environ.get("XLA_FLAGS", "")


def _require_flag(flag: str, option: str) -> None:
    """Add ``flag`` to XLA_FLAGS; XLA reads its flags when JAX starts its backends,
    so this must run before the first computation."""
    if flag in xla_flags().split():
        return
    if xla_bridge.backends_are_initialized():
        raise UserError(f"{option} must be set before JAX starts: run through the CLI with {option}, call "
                        "jaxseed.machine.require_flags(config) before any JAX computation, "
                        f"or set XLA_FLAGS={flag} in the environment")
    os.environ["XLA_FLAGS"] = f"{xla_flags()} {flag}".strip()


def require_flags(config) -> None:
    """Before JAX starts: XLA CPU's thread pool (``cpu_threads``) and the XLA flags every run takes
    (which fusions go to YNNPACK) or the config asks for (``portable``, ``deterministic``)."""
    _require_pool(config.cpu_threads)
    if not xla_bridge.backends_are_initialized():  # a process jaxseed sets up; not a notebook's that ran JAX
        _limit_malloc_arenas()
    named = _fusion_flags(xla_flags())
    if config.portable and named == [YNN_FUSIONS]:  # set for a run without it (in this process or its parent)
        if not xla_bridge.backends_are_initialized():
            os.environ["XLA_FLAGS"] = " ".join(flag for flag in xla_flags().split() if flag != YNN_FUSIONS)
        named = []
    if not named:  # else a user's choice, or --portable's kept for a later run of this process
        _require_flag(ynn_fusions(config.portable), "--portable" if config.portable else "jaxseed's default XLA flags")
    if config.portable:
        for flag in PORTABLE_FLAGS:
            _require_flag(flag, "--portable")
    if config.deterministic:
        _require_flag(DETERMINISTIC_FLAG, "--deterministic")


MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter, from glibc's malloc.h


def _limit_malloc_arenas() -> None:
    """At most ``MALLOC_ARENAS`` glibc heaps for the process's threads (elsewhere than glibc, nothing).

    glibc gives each thread that allocates a heap of its own, up to 8 per core, and keeps what is
    freed in each. XLA compiles on several threads: a first, compiling 1-epoch CNN run peaked at
    1.09-1.15 GB resident, against 0.91-0.93 GB with two heaps (and a run whose programs were cached
    at 0.86-0.87 against 0.80 GB), at the same speed (``benchmarks/README.md``). Memory only: no
    number changes. Neither JAX nor Python offers this; ``mallopt`` is glibc's own call.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None) if sys.platform.startswith("linux") else None
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def ynn_fusions(portable: bool) -> str:
    """The YNNPACK fusion flag a run takes unless XLA_FLAGS names its own."""
    return PORTABLE_YNN_FUSIONS if portable else YNN_FUSIONS


def _fusion_flags(flags: str) -> list[str]:
    """The YNNPACK fusion flags named in ``flags`` (an XLA_FLAGS string)."""
    return [flag for flag in flags.split() if flag.startswith(YNN_FUSION_TYPE + "=")]


def pool_free(portable: bool, flags: str | None) -> bool:
    """Whether a run of ``portable`` under XLA_FLAGS ``flags`` computes the same bits on any thread pool:
    ``--portable`` with its own YNNPACK fusions. Measured, not derived: each built-in model's step and
    evaluation gave the same bits with 1, 2 and 4 threads (``tests/test_portable.py``); a run without
    ``--portable`` (XLA's own convolutions) gave other bits with 1 thread than with 2, and with YNNPACK's
    reductions on so did ``--portable``."""
    return portable and _fusion_flags(flags or "") == [PORTABLE_YNN_FUSIONS]


def keep_recorded_fusions(recorded_flags) -> str | None:
    """Before JAX starts, for a rerun: the YNNPACK fusions a run recorded in its manifest's ``xla_flags``
    (input: used only where it is one flag of a value XLA accepts), set unless XLA_FLAGS names its own;
    returns the flag set. They decide the bits: runs before issue 33 had ``PORTABLE_YNN_FUSIONS``."""
    recorded = _fusion_flags(recorded_flags if isinstance(recorded_flags, str) else "")
    if len(recorded) != 1 or not _FUSION_TYPES.fullmatch(recorded[0]) or _fusion_flags(xla_flags()):
        return None
    _require_flag(recorded[0], "a rerun's recorded XLA flags")
    return recorded[0]


def _require_pool(threads: int) -> None:
    """Set XLA CPU's pool to ``threads`` (0: XLA's own choice, the usable cores) before JAX starts;
    after, refuse another pool than the one in force."""
    wanted = str(threads) if threads else None
    if os.environ.get(POOL_VARIABLE) == wanted:
        return
    if xla_bridge.backends_are_initialized():
        in_force = thread_pool()
        if in_force is None or in_force == expected_pool(threads) or not threads:
            return
        raise UserError(f"XLA CPU's thread pool already holds {in_force} threads, not --cpu-threads {threads}: "
                        f"set {POOL_VARIABLE}={threads} before JAX starts (before anything else in a notebook), "
                        f"or pass cpu_threads={in_force}")
    if wanted is None:
        os.environ.pop(POOL_VARIABLE, None)
    else:
        if "NPROC" in os.environ:
            print(f"jaxseed: NPROC={os.environ['NPROC']} in the environment is ignored: --cpu-threads {threads} "
                  f"sets XLA CPU's thread pool", file=sys.stderr)
        os.environ[POOL_VARIABLE] = wanted


def expected_pool(threads: int) -> int | None:
    """The threads XLA CPU's pool holds for ``--cpu-threads threads`` once JAX has started: at least one
    per CPU device (JAX_NUM_CPU_DEVICES), XLA's rule; None for 0 (the cores decide)."""
    return max(threads, len(jax.devices("cpu"))) if threads else None


def thread_pool() -> int | None:
    """Threads of XLA CPU's intra-op pool in force (JAX started), counted by their name; None where
    they cannot be seen (not Linux, or a jaxlib that names them otherwise)."""
    def name(task: str) -> str:
        with open(f"/proc/self/task/{task}/comm") as f:
            return f.read().strip()

    try:
        names = [name(task) for task in os.listdir("/proc/self/task")]
    except OSError:
        return None
    return names.count(POOL_THREAD_NAME) or None


def check_thread_pool(threads: int) -> int | None:
    """The pool in force, once JAX has started; says so on stderr where it is not the one asked for
    (``max(threads, CPU devices)``) or cannot be seen: the run's bits may then follow the cores."""
    in_force, wanted = thread_pool(), expected_pool(threads)
    if wanted and in_force != wanted:
        print(f"jaxseed: XLA CPU's thread pool holds {in_force or 'an unknown number of'} threads, not the "
              f"{wanted} asked for ({POOL_VARIABLE} may no longer be read by this jaxlib): this run's bits may "
              "depend on the number of cores", file=sys.stderr)
    return in_force


def runtime_cpu_features() -> list[str]:
    """Every CPU feature found by the ``cpuid`` instruction at run time, as numpy's dispatcher
    detects it: what a compiler that asks the CPU (LLVM, kernel libraries) sees. Unlike
    /proc/cpuinfo, which under qemu-user is still the host's, it is the emulated CPU's."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # another numpy layout: the identity falls back to /proc/cpuinfo alone
        return []
    return sorted(name for name, present in __cpu_features__.items() if present)


def _private_folder(folder: str) -> bool:
    """Make ``folder`` (and its parents) as needed, private to this user; False if it exists
    and is not (another user's, or writable by others): its programs could be anyone's."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    status = os.stat(folder)
    return status.st_uid == os.getuid() and not status.st_mode & 0o022


def no_compilation_cache() -> None:
    """Compile every program of this process afresh, even where an earlier call in it (a notebook
    that trained before it ablates or verifies) turned the persistent cache on."""
    if jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()


def use_compilation_cache() -> str | None:
    """Keep compiled programs on disk (JAX's persistent compilation cache), so a second run of
    the same shape starts without compiling; returns the folder, or None when not used.

    ``$JAXSEED_COMPILATION_CACHE`` names the folder ("" turns it off); default
    ``~/.cache/jaxseed/xla`` (or under ``$XDG_CACHE_HOME``). Cache entries are native code,
    so the folder is made private to the user (one that is not is not used), and each CPU
    identity gets its own subfolder: ``cpu()`` (the model, /proc/cpuinfo's extensions and
    every feature ``cpuid`` reports at run time), the XLA flags, the thread pool and jaxlib's version. A cache on a
    shared home folder never hands one CPU's programs to another. A cached program is the
    compiled program itself, so results are the same bits as with a fresh compile.
    ``jaxseed.verify`` does not use it: a verification compiles its own programs.
    """
    root = os.environ.get("JAXSEED_COMPILATION_CACHE")
    if root == "":
        return None
    root = root or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxseed", "xla")
    identity = [cpu(), xla_flags(), os.environ.get(POOL_VARIABLE), jax.lib.__version__]
    folder = os.path.join(root, hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16])
    try:
        private = _private_folder(root) and _private_folder(folder)
    except OSError as error:
        print(f"jaxseed: no compilation cache ({root}: {error.strerror})", file=sys.stderr)
        return None
    if not private:
        print(f"jaxseed: not using the compilation cache in {root}: it is not private to you", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    # Every program, however quick to compile: building the model op by op compiles ~50 small
    # ones, ~2.5 s of a start-up otherwise.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return folder
