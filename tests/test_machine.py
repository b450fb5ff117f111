"""jaxseed.machine: XLA CPU's thread pool fixed whatever the cores, no racing YNNPACK fusions, and
what of the machine a run records."""

import json
import os
import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT, fresh_shell_xla_flags
from jaxseed import machine
from jaxseed.config import Config
from jaxseed.errors import UserError

pytestmark = pytest.mark.slow  # subprocesses on 1 and 2 cores

TINY = ["--data", "synthetic", "--train-limit", "256", "--batch-size", "64", "--epochs", "1", "--quiet"]


def train(workdir, *flags, pin=None, env=None):
    """The manifest and stderr of ``python -m jaxseed.train`` in its own process, on the cores ``pin``
    names (taskset) or on every one."""
    command = [sys.executable, "-m", "jaxseed.train", *TINY, *flags, "--workdir", str(workdir)]
    result = subprocess.run(["taskset", "-c", pin, *command] if pin else command, cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((workdir / "manifest.json").read_text()), result.stderr


@pytest.mark.parametrize("flags", [[], ["--portable"]], ids=["default", "portable"])
def test_one_core_and_every_core_give_one_param_hash(tmp_path, flags):
    """With a pool that followed the cores, the same run gave another param_hash pinned to 1 of 2
    cores (AMD EPYC, AVX2), --portable or not."""
    one, _ = train(tmp_path / "one", *flags, pin="0")
    every, _ = train(tmp_path / "every", *flags)
    assert one["cpu"]["cores"] == 1
    assert one["thread_pool"] == every["thread_pool"] == Config().cpu_threads
    assert one["param_hash"] == every["param_hash"]


def test_the_pool_and_flags_are_recorded_and_a_stray_nproc_named(tmp_path):
    recorded, stderr = train(tmp_path / "run", "--cpu-threads", "3", env={"NPROC": "5", "PJRT_NPROC": "7"})
    assert recorded["config"]["cpu_threads"] == 3 and recorded["thread_pool"] == 3
    assert machine.YNN_FUSIONS in recorded["xla_flags"].split()
    assert "jaxseed: NPROC=5 in the environment is ignored: --cpu-threads 3 sets XLA CPU's thread pool" in stderr


def test_the_ynnpack_fusions_follow_portable_and_a_users_choice_is_kept(monkeypatch):
    """Before JAX starts (as it seems here): dot fusions alone, --portable's for a portable run,
    also after a run without it in the same process; a user's fusion types untouched."""
    monkeypatch.setattr(machine.xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setenv(machine.POOL_VARIABLE, str(Config().cpu_threads))

    def flags(start, config):
        monkeypatch.setenv("XLA_FLAGS", start)
        machine.require_flags(config)
        return [flag for flag in machine.xla_flags().split() if "ynn" in flag]

    assert flags("", Config()) == [machine.YNN_FUSIONS]
    assert flags("", Config(portable=True)) == [machine.PORTABLE_YNN_FUSIONS]
    assert flags(machine.YNN_FUSIONS, Config(portable=True)) == [machine.PORTABLE_YNN_FUSIONS]
    assert flags(machine.PORTABLE_YNN_FUSIONS, Config()) == [machine.PORTABLE_YNN_FUSIONS]
    users = "--xla_cpu_experimental_ynn_fusion_type="
    assert flags(users, Config()) == flags(users, Config(portable=True)) == [users]


def test_a_rerun_keeps_the_recorded_fusions_where_xla_accepts_them(monkeypatch):
    """A manifest is input: one fusion flag of a value XLA accepts is taken (a bad one would abort the
    process), and never over XLA_FLAGS' own."""
    monkeypatch.setattr(machine.xla_bridge, "backends_are_initialized", lambda: False)
    old = "--xla_backend_optimization_level=0 --xla_cpu_experimental_ynn_fusion_type=-reduce"
    for recorded, kept in [(old, machine.PORTABLE_YNN_FUSIONS), ("--xla_cpu_experimental_ynn_fusion_type=", None),
                           ("--xla_cpu_experimental_ynn_fusion_type=dot,eltwise", None),
                           ("--xla_cpu_experimental_ynn_fusion_type=-dot,+eltwise", None),
                           ("--xla_cpu_experimental_ynn_fusion_type=dot,-reduce", False),
                           ("--xla_cpu_experimental_ynn_fusion_type=bogus", False), (None, False), ("", False),
                           (f"{machine.YNN_FUSIONS} {machine.PORTABLE_YNN_FUSIONS}", False)]:
        monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX")
        got = machine.keep_recorded_fusions(recorded)
        if kept is False:
            assert got is None and machine.xla_flags() == "--xla_cpu_max_isa=AVX", recorded
        else:
            assert got == (kept or recorded) and machine.xla_flags() == f"--xla_cpu_max_isa=AVX {got}", recorded
    monkeypatch.setenv("XLA_FLAGS", machine.YNN_FUSIONS)  # the user's (or a parent's) own
    assert machine.keep_recorded_fusions(old) is None and machine.xla_flags() == machine.YNN_FUSIONS


def test_a_run_recorded_under_other_fusions_verifies_under_them(tmp_path):
    """Every run before issue 33 had YNNPACK's elementwise fusions: verify reruns it under them, and matches."""
    fast = "--xla_backend_optimization_level=1"  # conftest's, for both
    recorded, _ = train(tmp_path / "run", env={"XLA_FLAGS": f"{fast} {machine.PORTABLE_YNN_FUSIONS}"})
    assert recorded["xla_flags"].split() == [fast, machine.PORTABLE_YNN_FUSIONS]
    result = subprocess.run([sys.executable, "-m", "jaxseed.verify", str(tmp_path / "run"), "--quiet"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "XLA_FLAGS": fast})
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert f"rerun with the recorded run's {machine.PORTABLE_YNN_FUSIONS}" in result.stdout
    assert f"MATCH param_hash {recorded['param_hash']}" in result.stdout


def test_portable_after_a_run_without_it_is_refused_in_one_line(monkeypatch):
    import jax

    jax.numpy.zeros(1).block_until_ready()
    monkeypatch.setenv("XLA_FLAGS", machine.YNN_FUSIONS)  # in force: the fusions of a run without --portable
    with pytest.raises(UserError, match="--portable must be set before JAX starts"):
        machine.require_flags(Config(portable=True))


@pytest.mark.slow  # a process of its own
def test_the_loop_sets_the_flags_in_a_fresh_process(tmp_path):
    """loop.train_and_evaluate (the experiments' and benchmarks' entry) from a script that set nothing:
    the loop sets the pool and flags before anything it does starts JAX (claiming the run folder asks
    JAX for the process index)."""
    script = ("import sys; from jaxseed import loop, machine, streams; from jaxseed.config import Config; "
              "info = loop.train_and_evaluate(Config(data='synthetic', train_limit=128, batch_size=64, epochs=1), "
              f"streams.resolve_seeds(0), {str(tmp_path / 'run')!r}, progress=False); "
              "sys.exit(machine.YNN_FUSIONS not in info['xla_flags'])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT_ROOT,
                            env={**os.environ, "XLA_FLAGS": fresh_shell_xla_flags()}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heaps")
def test_a_process_jaxseed_sets_up_keeps_two_heaps_for_its_threads():
    """Six threads allocating at once get glibc heaps of their own, up to 8 per core: after
    require_flags they share machine.MALLOC_ARENAS (glibc's malloc_stats lists each heap)."""
    script = """
import ctypes, sys, threading
if sys.argv[1] == "jaxseed":
    from jaxseed import machine
    from jaxseed.config import Config
    machine.require_flags(Config())
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
together = threading.Barrier(6)
def allocate():
    libc.free(libc.malloc(1 << 16))
    together.wait()  # every thread alive at once: none takes over a heap an ended one left
threads = [threading.Thread(target=allocate) for _ in range(6)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc.malloc_stats()
"""
    heaps = {}
    for setup in ("jaxseed", "none"):
        result = subprocess.run([sys.executable, "-c", script, setup], capture_output=True, text=True, cwd=PROJECT_ROOT,
                                env={**os.environ, "XLA_FLAGS": fresh_shell_xla_flags()}, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        heaps[setup] = result.stderr.count("Arena ")
    assert heaps["jaxseed"] == machine.MALLOC_ARENAS < heaps["none"]


def test_cpu_threads_0_leaves_the_pool_to_the_cores(tmp_path):
    recorded, _ = train(tmp_path / "run", "--cpu-threads", "0", pin="0")
    assert recorded["thread_pool"] == 1


def test_another_pool_after_jax_started_is_refused_in_one_line():
    import jax

    jax.numpy.zeros(1).block_until_ready()  # conftest set the default pool before JAX started
    assert machine.thread_pool() == Config().cpu_threads
    machine.require_flags(Config())  # the pool in force: nothing to do
    with pytest.raises(UserError, match="thread pool already holds 2 threads, not --cpu-threads 3: set PJRT_NPROC=3"):
        machine.require_flags(Config(cpu_threads=3))


def test_a_pool_not_in_force_is_said(monkeypatch, capsys):
    monkeypatch.setattr(machine, "thread_pool", lambda: 2)
    assert machine.check_thread_pool(8) == 2
    assert "thread pool holds 2 threads, not the 8 asked for" in capsys.readouterr().err
    machine.check_thread_pool(0)
    assert capsys.readouterr().err == ""


# Sums whose every partial sum is an integer below 2^24, so exact in float32 in any order: the
# reproduction of YNNPACK's race, and a reduction of each shape the built-in models make.
RACE_CHECK = """
import jax, jax.numpy as jnp
from jaxseed import machine
from jaxseed.config import Config
machine.require_flags(Config(portable={portable}))
checks = {
    "broadcast sum (the race)": (lambda x: jnp.sum(jnp.broadcast_to(x, (2, 1024, 1024))), (1024, 1), 2 ** 21),
    "conv bias gradient": (lambda x: jnp.sum(x, axis=(0, 1, 2))[0], (128, 28, 28, 32), 128 * 28 * 28),
    "dense bias gradient": (lambda x: jnp.sum(x, axis=0)[0], (128, 1024), 128),
    "per-example sum": (lambda x: jnp.sum(x, axis=1)[0], (128, 784), 784),
    "batch mean": (lambda x: jnp.mean(jnp.sum(x, axis=1)), (128, 10), 10),
    "portable kernel gradient": (lambda x: (x[:, :, None] * x[:, None, :20]).sum(0)[0, 0], (128, 400), 128),
}
for name, (f, shape, exact) in checks.items():
    f, x = jax.jit(f), jnp.ones(shape)
    values = {float(f(x)) for _ in range(50)}
    print(name, sorted(values), exact, values == {exact})
"""


@pytest.mark.parametrize("portable", [False, True], ids=["default", "portable"])
def test_sums_are_exact_on_every_call_under_jaxseeds_start_up(portable):
    """jaxlib 0.10.2's YNNPACK fusions returned up to 3% too much, from call to call, on 2 threads."""
    result = subprocess.run([sys.executable, "-c", RACE_CHECK.replace("{portable}", str(portable))], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=300, env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 6 and all(line.endswith(" True") for line in lines), lines
