"""--portable: both XLA flags set before JAX starts and recorded, and the same bits on another
x86 CPU, checked under qemu-user's emulated Haswell where qemu-x86_64 is installed (.ci/run
installs it), so a jax upgrade that breaks portability fails here."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT
from jaxseed import machine
from jaxseed.config import Config
from jaxseed.errors import UserError

pytestmark = pytest.mark.slow  # emulated CPUs

TINY = ["--data", "synthetic", "--train-limit", "256", "--batch-size", "64", "--epochs", "1", "--quiet"]


def test_portable_sets_both_flags_before_jax_starts_and_records_them(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jaxseed.train", *TINY, "--portable", "--workdir", str(tmp_path)],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = json.loads((tmp_path / "manifest.json").read_text())
    assert recorded["config"]["portable"] is True
    assert all(flag in recorded["xla_flags"].split() for flag in machine.PORTABLE_FLAGS)


def test_portable_after_jax_started_is_refused_in_one_line(monkeypatch):
    import jax

    jax.numpy.zeros(1).block_until_ready()  # the backend is up: XLA has read its flags
    monkeypatch.setenv("XLA_FLAGS", machine.PORTABLE_YNN_FUSIONS)  # only --portable's other flags lack
    with pytest.raises(UserError, match="--portable must be set before JAX starts"):
        machine.require_flags(Config(portable=True))


def test_the_portable_product_computes_the_plain_one_and_its_gradients():
    """To rounding (on the CPU it was written on, bit for bit: the dot summed the batch in the reduce's order)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxseed import portable

    x, w = jax.random.normal(jax.random.key(0), (32, 40)), jax.random.normal(jax.random.key(1), (40, 24))
    g = jax.random.normal(jax.random.key(2), (32, 24))
    out, pull = jax.vjp(jax.jit(portable.matmul), x, w)
    plain_out, plain_pull = jax.vjp(jax.jit(jnp.matmul), x, w)
    np.testing.assert_allclose(out, plain_out, rtol=1e-6)
    for got, want in zip(pull(g), plain_pull(g)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="nnx.Linear"):
        portable.dot_general(x, w, (((0,), (0,)), ((), ())))


def bits(command, folder, emulate=None, options=()):
    """The lines of ``tests/scripts/portable_bits.py COMMAND FOLDER [OPTIONS]``, natively or under
    ``qemu-x86_64 -cpu emulate``."""
    command = [sys.executable, os.path.join("tests", "scripts", "portable_bits.py"), command, str(folder), *options]
    if emulate:
        command = ["qemu-x86_64", "-cpu", emulate, *command]
    env = {**os.environ, "JAXSEED_COMPILATION_CACHE": ""}  # under qemu-user /proc/cpuinfo is the host's
    env.pop("XLA_FLAGS", None)  # the programs users run: XLA's default optimisation level
    result = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None,
                    reason="qemu-user is not installed (apt-get install qemu-user)")
def test_a_portable_step_and_evaluation_give_the_same_bits_on_an_emulated_haswell(tmp_path):
    """A training step and an evaluation of each built-in model: the gradients of every matmul and
    convolution, AdamW, augmentation, dropout and latent draws; and rsqrt, erf_inv, tanh, a large
    matmul and the initialiser's truncated normal. Traced here, compiled and run on each CPU
    (~3 min under emulation)."""
    native = bits("export", tmp_path)
    assert len(native) == 4
    assert bits("run", tmp_path, emulate="Haswell-v4")[:-1] == native[:-1]  # the last: the thread pool


def test_portable_bits_do_not_depend_on_the_thread_pool(tmp_path):
    """The steps and evaluations above, at the default batch of 128, with 1, 2 (the export's) and 4
    threads in XLA CPU's pool: the same bits, so a --portable study's shards may each take their own
    --cpu-threads (docs/studies.md). Without --portable (XLA's own convolutions), a run's bits follow
    the pool (docs/promises.md)."""
    batch = ["--batch-size", "128"]
    native = bits("export", tmp_path, options=batch)
    assert len(native) == 4 and native[-1] == "XLA CPU thread pool 2"
    for threads in (1, 4):
        assert bits("run", tmp_path, options=[*batch, "--cpu-threads", str(threads)]) == [
            *native[:-1], f"XLA CPU thread pool {threads}"]
