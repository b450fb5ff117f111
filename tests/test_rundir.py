"""The run folder: one owner at a time, never a write outside it or through a link, failed
writes as one line, and every file read back checked (rundir.py, through the entry points)."""

import errno
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from conftest import PROJECT_ROOT
from jaxseed import diff, manifest, rundir, train, verify
from jaxseed.errors import UserError

TINY = ["--data", "synthetic", "--train-limit", "256", "--batch-size", "64", "--epochs", "2", "--steps-per-call", "4",
        "--quiet"]


def one_error_line(capsys, *fragments):
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error, error
    for fragment in fragments:
        assert fragment in error, error
    return error


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else os.readlink(p)
                                         if p.is_symlink() else None) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished, traced tiny run (trained once for the whole module); tests copy it before changing it."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    assert train.main([*TINY, "--trace", "--seed", "3", "--workdir", str(workdir)]) == 0
    return workdir


def copy_of(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


def first_temporary_name_is(monkeypatch, name):
    """mkstemp's candidate names made predictable: ``name`` first, then fresh ones, so that a link
    can wait at the temporary name a whole-file write tries first (``.<target>.tmp.<name>``)."""
    monkeypatch.setattr(tempfile, "_get_candidate_names",
                        lambda: itertools.chain([name], (f"fresh{i}" for i in itertools.count())))


# ---------------------------------------------------------------- one owner


def test_a_second_claim_is_refused_naming_the_holder(tmp_path):
    with rundir.RunFolder.claim(str(tmp_path / "w")):
        with pytest.raises(UserError, match=f"^workdir {re.escape(str(tmp_path / 'w'))} is in use by process "
                                            f"{os.getpid()} on .+ since .+; wait for it to finish or choose another "
                                            "--workdir$"):
            rundir.RunFolder.claim(str(tmp_path / "w"), resume=True)
    with rundir.RunFolder.claim(str(tmp_path / "w"), resume=True):  # released: claimable again
        pass


@pytest.mark.slow
def test_a_killed_holder_leaves_no_claim(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from jaxseed import rundir; "
                               f"rundir.RunFolder.claim({str(tmp_path / 'w')!r}); print('held', flush=True); "
                               "time.sleep(600)"], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
        rundir.RunFolder.claim(str(tmp_path / "w"))
    holder.kill()
    holder.wait()
    rundir.RunFolder.claim(str(tmp_path / "w")).release()  # the OS released the lock with the process


@pytest.mark.slow
def test_two_runs_on_one_folder(tmp_path):
    """The issue's reproduction: a second run started on a folder in use is refused in one line,
    and the first finishes intact, its own seed in every file."""
    workdir = tmp_path / "w"
    first = subprocess.Popen([sys.executable, "-m", "jaxseed.train", *TINY, "--train-limit", "1280", "--epochs", "1",
                              "--steps-per-call", "1", "--seed", "1", "--workdir", str(workdir)],
                             cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (workdir / "manifest.json").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-m", "jaxseed.train", *TINY, "--seed", "2", "--workdir", str(workdir)],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert f"is in use by process {first.pid}" in second.stderr
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    info = json.loads((workdir / "manifest.json").read_text())
    assert info["streams"]["init"] == 1 and info["status"] == "finished"
    assert info["final"] == rundir.read_metrics(str(workdir))[-1]


# ---------------------------------------------------------------- what it may touch


def test_a_folder_of_the_users_is_refused_untouched(tmp_path, capsys):
    (tmp_path / "proj" / "checkpoints").mkdir(parents=True)
    (tmp_path / "proj" / "checkpoints" / "important.pt").write_text("weights")
    before = snapshot(tmp_path / "proj")
    for flags in ([], ["--overwrite"], ["--resume"]):
        assert train.main([*TINY, "--workdir", str(tmp_path / "proj"), *flags]) == 2
        one_error_line(capsys, "error: ")
    assert snapshot(tmp_path / "proj") == before


def test_overwrite_removes_exactly_what_a_run_writes(finished, tmp_path, capsys):
    workdir = copy_of(finished, tmp_path)
    (workdir / "notes.txt").write_text("mine")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    os.symlink(outside, workdir / "checkpoints-unreadable")  # a planted link among the run's names
    assert train.main([*TINY, "--seed", "4", "--workdir", str(workdir)]) == 2  # holds a run: refused
    one_error_line(capsys, "already holds a run", "--overwrite")
    assert train.main([*TINY, "--seed", "4", "--workdir", str(workdir), "--overwrite"]) == 0
    assert not (workdir / "trace.jsonl").exists()  # the old run's trace is not left beside the new manifest
    assert (workdir / "notes.txt").read_text() == "mine" and (outside / "keep").read_text() == "keep"
    assert not (workdir / "checkpoints-unreadable").exists()
    assert json.loads((workdir / "manifest.json").read_text())["streams"]["init"] == 4


def test_no_write_goes_through_a_planted_link(finished, tmp_path, monkeypatch, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not jaxseed's")
    workdir = copy_of(finished, tmp_path)
    first_temporary_name_is(monkeypatch, "planted")
    for name in ("manifest.json", "metrics.jsonl", "curves.png", "test_probabilities.npy"):
        (workdir / f".{name}.tmp.planted").symlink_to(outside)  # where each whole-file write would go first
    os.replace(workdir / "curves.png", tmp_path / "curves.png")
    (workdir / "curves.png").symlink_to(outside)  # a whole-file write replaces the link, not its target
    assert train.main(["--resume", "--workdir", str(workdir)]) == 0
    assert outside.read_bytes() == b"not jaxseed's" and not (workdir / "curves.png").is_symlink()
    (workdir / "trace.jsonl").unlink()
    (workdir / "trace.jsonl").symlink_to(outside)  # appends: refused
    assert train.main([*TINY, "--trace", "--workdir", str(workdir), "--overwrite"]) == 0  # the links are removed
    assert not list(workdir.glob(".*.tmp.*"))
    (workdir / "trace.jsonl").unlink()
    os.symlink(outside, workdir / "trace.jsonl")
    folder = rundir.RunFolder.claim(str(workdir), resume=True)
    with pytest.raises(UserError, match="symbolic link"):
        folder.append_lines("trace.jsonl", [{"step": 0}])
    folder.release()
    assert outside.read_bytes() == b"not jaxseed's"


def test_a_linked_checkpoints_folder_is_refused(finished, tmp_path, capsys):
    workdir, elsewhere = copy_of(finished, tmp_path), tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(workdir / "checkpoints")
    (workdir / "checkpoints").symlink_to(elsewhere)  # orbax would save and prune there
    assert train.main(["--resume", "--workdir", str(workdir)]) == 2
    one_error_line(capsys, "checkpoints is not a folder jaxseed made")
    assert list(elsewhere.iterdir()) == []


# ---------------------------------------------------------------- failed writes


def fail_writes_of(monkeypatch, name, after=0):
    """Writes of ``name`` fail with 'No space left on device' from the (after+1)-th on."""
    real = rundir.RunFolder._replace
    calls = []

    def replace(self, target, write, mode="w"):
        if target == name:
            calls.append(1)
            if len(calls) > after:
                raise rundir._os_error(self.file(target), OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return real(self, target, write, mode)

    monkeypatch.setattr(rundir.RunFolder, "_replace", replace)


@pytest.mark.slow
def test_a_failed_write_is_one_line_and_resume_completes_bit_for_bit(finished, tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "w"
    fail_writes_of(monkeypatch, "metrics.jsonl", after=2)  # the first epoch's line is written, the second's not
    assert train.main([*TINY, "--trace", "--seed", "3", "--workdir", str(workdir)]) == 2
    one_error_line(capsys, f"cannot write {workdir / 'metrics.jsonl'}: No space left on device")
    monkeypatch.undo()  # space freed
    assert train.main(["--resume", "--workdir", str(workdir)]) == 0
    resumed = json.loads((workdir / "manifest.json").read_text())
    assert resumed["param_hash"] == json.loads((finished / "manifest.json").read_text())["param_hash"]
    assert [row["epoch"] for row in rundir.read_metrics(str(workdir))] == [1, 2]
    assert (workdir / "trace.jsonl").read_text() == (finished / "trace.jsonl").read_text()


def mount_tmpfs(path, size):
    path.mkdir(exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return result.returncode == 0


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_resume_completes_bit_for_bit(finished, tmp_path):
    """A real full disk (a small tmpfs; needs root): the CNN's checkpoints (~10 MB each) fill it."""
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "14m"):
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        result = subprocess.run([sys.executable, "-m", "jaxseed.train", *TINY, "--trace", "--seed", "3",
                                 "--workdir", str(disk / "w")], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.count("\n") == 1 and "No space left on device" in result.stderr, result.stderr[-3000:]
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space freed
        result = subprocess.run([sys.executable, "-m", "jaxseed.train", "--resume", "--workdir", str(disk / "w")],
                                cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        resumed = json.loads((disk / "w" / "manifest.json").read_text())
        assert resumed["param_hash"] == json.loads((finished / "manifest.json").read_text())["param_hash"]
    finally:
        subprocess.run(["umount", str(disk)])


ORPHANED_WRITE = """
import asyncio, sys
import tensorstore as ts
from jaxseed import checkpoint
checkpoint.Checkpointer(sys.argv[1])
promise, write = ts.Promise.new()

async def wait_for(write):
    await write


async def save():  # as orbax's synchronous save: one write fails, the loop closes, another is still in flight
    pending = asyncio.ensure_future(wait_for(write))
    await asyncio.sleep(0.01)
    raise OSError("No space left on device")

loop = asyncio.new_event_loop()
try:
    loop.run_until_complete(save())
except OSError:
    pass
loop.close()
promise.set_result(None)  # the orphaned write ends: tensorstore finds the loop closed


class Other:
    def __del__(self):
        raise ValueError("another")


Other()  # any other unraisable error is still reported
"""


@pytest.mark.slow
def test_a_write_that_ends_after_a_failed_save_prints_nothing_and_other_reports_still_do(tmp_path):
    """The full disk's one line in CI once came with 25 tracebacks of writes that ended after the failed save."""
    result = subprocess.run([sys.executable, "-c", ORPHANED_WRITE, str(tmp_path / "checkpoints")], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Event loop is closed" not in result.stderr, result.stderr
    assert "ValueError: another" in result.stderr, result.stderr


# ---------------------------------------------------------------- reading what others wrote


def test_crafted_files_are_refused_in_one_line(tmp_path):
    (tmp_path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)  # deeper than the parser goes
    with pytest.raises(UserError, match="not valid JSON"):
        rundir.read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {}, "streams": [1, 2]}))
    with pytest.raises(UserError, match="field 'streams'"):
        rundir.read_manifest(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "step": 4}\nnot json\n')
    with pytest.raises(UserError, match="metrics.jsonl line 2: not valid JSON"):
        rundir.read_metrics(str(tmp_path))
    (tmp_path / "trace.jsonl").write_text('{"step": 0, "epoch": 1, "loss": 0.5}\n')
    with pytest.raises(UserError, match="field 'param_checksum'"):
        rundir.read_trace(str(tmp_path))
    with open(tmp_path / "big.npy", "wb") as f:  # a header claiming 2^40 x 10 floats over a tiny body
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2**40, 10)})
    with pytest.raises(UserError, match=r"holds float32\[1099511627776, 10\], expected float32\[500, 10\]"):
        rundir.load_array(str(tmp_path), "big.npy", np.float32, (500, 10))
    np.save(tmp_path / "short.npy", np.zeros((499, 10), np.float32))
    with pytest.raises(UserError, match="expected"):
        rundir.load_array(str(tmp_path), "short.npy", np.float32, (500, 10))


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("param_hash"), "field 'param_hash'"),
    (lambda m: m.update(streams=[1, 2, 3]), "field 'streams'"),
    (lambda m: m["config"].update(epochs="2"), "epochs must be an integer"),
    (lambda m: m["config"].update(epochs=10**9), "epochs must be <="),
    (lambda m: m["config"].update(trace=1), "trace must be true or false"),
    (lambda m: m["config"].update(data_dir="../../../etc"), "outside its folder; pass --data-dir"),
    (lambda m: m["config"].update(data_dir="/data/mnist"), "outside its folder; pass --data-dir"),
    (lambda m: m["config"].update(surprise=1), "fields jaxseed does not know"),
    (lambda m: m["streams"].update(init=-1), "[0, 4294967295]"),
    (lambda m: m["streams"].update(init=True), "not an integer"),
])
def test_a_foreign_manifest_is_checked_like_flags(finished, tmp_path, capsys, change, message):
    workdir = copy_of(finished, tmp_path)
    recorded = json.loads((workdir / "manifest.json").read_text())
    change(recorded)
    (workdir / "manifest.json").write_text(json.dumps(recorded))
    before = snapshot(workdir)
    assert verify.main([str(workdir), "--quiet"]) == 2
    one_error_line(capsys, message)
    if "param_hash" not in message:
        assert train.main(["--resume", "--workdir", str(workdir)]) == 2
        one_error_line(capsys, message)
    assert snapshot(workdir) == before


def test_verify_prints_the_data_and_reports_a_mismatch(finished, tmp_path, capsys):
    workdir = copy_of(finished, tmp_path)
    recorded = json.loads((workdir / "manifest.json").read_text())
    assert verify.main([str(workdir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"data: synthetic, data_hash {recorded['data_hash']} (the same as the recorded one)" in out
    assert f"MATCH param_hash {recorded['param_hash']}" in out
    recorded["param_hash"] = "0" * 64
    recorded["fingerprints"]["shuffle"] = "tampered"
    (workdir / "manifest.json").write_text(json.dumps(recorded))
    assert verify.main([str(workdir), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH param_hash recorded 0000" in out and "streams that drew differently: shuffle" in out


def test_diff_refuses_crafted_traces(finished, tmp_path, capsys):
    workdir = copy_of(finished, tmp_path)
    (workdir / "trace.jsonl").write_text('{"step": 0, "epoch": 1}\n')
    assert diff.main([str(finished), str(workdir)]) == 2
    one_error_line(capsys, "field 'loss'")
    assert diff.main([str(finished), str(finished)]) == 0


def test_the_recorded_command_holds_no_path_of_the_machine():
    cwd = os.getcwd()
    argv = ["/usr/bin/python3", "-m", "jaxseed.train", "--workdir", os.path.join(cwd, "runs", "a"),
            "--data-dir=/home/someone/mnist", "--seed", "1"]
    assert manifest.command(argv) == ["python3", "-m", "jaxseed.train", "--workdir", os.path.join("runs", "a"),
                                      "--data-dir=<...>/mnist", "--seed", "1"]


def test_data_dir_round_trips_through_a_manifest_relative_to_the_run(tmp_path):
    from jaxseed.config import Config

    config = Config(data_dir=str(tmp_path / "run" / "data"))
    record = manifest.config_record(config, str(tmp_path / "run"))
    assert record["data_dir"] == "data"
    assert manifest.config_from_record(record, str(tmp_path / "run")) == config
    moved = manifest.config_from_record(record, str(tmp_path / "moved"))  # the folder moved with its data
    assert moved.data_dir == str(tmp_path / "moved" / "data")
    elsewhere = manifest.config_record(Config(data_dir=str(tmp_path / "mnist")), str(tmp_path / "run"))
    with pytest.raises(UserError, match="outside its folder"):
        manifest.config_from_record(elsewhere, str(tmp_path / "run"))
    given = manifest.config_from_record(elsewhere, str(tmp_path / "run"), data_dir=str(tmp_path / "mnist"))
    assert given.data_dir == str(tmp_path / "mnist")


def test_a_manifest_holds_the_models_own_settings_and_older_ones_every_models(tmp_path):
    """A VAE's latents come back from its record; a record from before the models owned their
    settings (every config held dropout_rate, latents, binarize, importance_samples) still reads,
    as its own model's; a field nobody owns is refused."""
    from jaxseed.config import Config

    config = Config(model="vae").replace(latents=7, epochs=3)
    assert manifest.config_from_record(manifest.config_record(config, str(tmp_path)), str(tmp_path)) == config
    older = {**Config().to_dict(), "dropout_rate": 0.25, "latents": 20, "binarize": "dynamic",
             "importance_samples": 100}
    assert manifest.config_from_record(older, str(tmp_path)) == Config().replace(dropout_rate=0.25)
    with pytest.raises(UserError, match="holds a config with fields jaxseed does not know"):
        manifest.config_from_record({**Config().to_dict(), "noise_std": 0.1}, str(tmp_path))


def test_the_compilation_cache_is_private(tmp_path, monkeypatch, capsys):
    from jaxseed import machine

    monkeypatch.setattr(machine.jax.config, "update", lambda *args: None)  # leave this process's JAX alone
    monkeypatch.setenv("JAXSEED_COMPILATION_CACHE", str(tmp_path / "cache"))
    folder = machine.use_compilation_cache()
    assert os.stat(tmp_path / "cache").st_mode & 0o777 == 0o700 and os.stat(folder).st_mode & 0o777 == 0o700
    os.chmod(tmp_path / "cache", 0o777)
    assert machine.use_compilation_cache() is None
    assert "not private to you" in capsys.readouterr().err
    assert machine.cpu()["cpuid_features"]  # what the compiler sees, part of the cache's key


# ---------------------------------------------------------------- planted links, method by method


WRITES = {"manifest.json": lambda folder: folder.write_json("manifest.json", {"config": {}, "streams": {}}),
          "sweep.json": lambda folder: folder.create_json("sweep.json", {"config": {}}),
          "ablation.md": lambda folder: folder.write_text("ablation.md", "# report\n"),
          "metrics.jsonl": lambda folder: folder.write_lines("metrics.jsonl", [{"epoch": 1, "step": 4}]),
          "test_losses.npy": lambda folder: folder.save_array("test_losses.npy", np.zeros(3, np.float32)),
          "records.npz": lambda folder: folder.save_arrays("records.npz", {"a": np.zeros(3)}),
          "curves.png": lambda folder: folder.save_picture("curves.png", lambda f: f.write(b"\x89PNG"))}


@pytest.mark.parametrize("name", WRITES)
def test_a_whole_file_write_goes_through_no_link_at_its_target_or_temporary_name(tmp_path, monkeypatch, name):
    outside = tmp_path / "outside"
    outside.write_bytes(b"not jaxseed's")
    first_temporary_name_is(monkeypatch, "planted")
    with rundir.RunFolder.claim(str(tmp_path / "w"), "study" if name in rundir.OUTPUTS["study"] else "run") as folder:
        (tmp_path / "w" / f".{name}.tmp.planted").symlink_to(outside)
        WRITES[name](folder)
        assert outside.read_bytes() == b"not jaxseed's"
        assert (tmp_path / "w" / name).is_file() and not (tmp_path / "w" / name).is_symlink()
        (tmp_path / "w" / name).unlink()
        (tmp_path / "w" / name).symlink_to(outside)  # at the target: replaced (create_json: left), not written through
        WRITES[name](folder)
        assert outside.read_bytes() == b"not jaxseed's"
        folder.remove_outputs()  # --overwrite: both links go, what they point to stays
        assert os.listdir(tmp_path / "w") == [rundir.MARKER] and outside.read_bytes() == b"not jaxseed's"


def test_a_linked_marker_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("{}")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / rundir.MARKER).symlink_to(outside)
    with pytest.raises(UserError, match="is not a file jaxseed wrote"):
        rundir.RunFolder.claim(str(tmp_path / "w"), resume=True)
    assert outside.read_text() == "{}"


READS = [("manifest.json", rundir.read_manifest),
         ("sweep.json", lambda path: rundir.read_json(path, "sweep.json")),
         ("metrics.jsonl", rundir.read_metrics),
         ("trace.jsonl", rundir.read_trace),
         ("trace.jsonl", lambda path: rundir.RunFolder.claim(path, writer=False).kept_lines(
             "trace.jsonl", lambda row: True, rundir.TRACE_FIELDS)),
         ("test_losses.npy", lambda path: rundir.load_array(path, "test_losses.npy", np.float32, (3,)))]


@pytest.mark.parametrize("name, read", READS,
                         ids=["read_manifest", "read_json", "read_metrics", "read_trace", "kept_lines", "load_array"])
def test_a_read_follows_no_planted_link(tmp_path, name, read):
    """Each reader of a run's files, on a link to a file it accepts: refused, not followed."""
    real, linked = tmp_path / "real", tmp_path / "linked"
    real.mkdir()
    linked.mkdir()
    (real / "manifest.json").write_text(json.dumps({"config": {}, "streams": {}}))
    (real / "sweep.json").write_text('{"config": {}}')
    (real / "metrics.jsonl").write_text('{"epoch": 1, "step": 4}\n')
    (real / "trace.jsonl").write_text('{"step": 0, "epoch": 1, "loss": 0.5, "param_checksum": 7}\n')
    np.save(real / "test_losses.npy", np.zeros(3, np.float32))
    (linked / name).symlink_to(real / name)
    assert len(read(str(real))) > 0  # accepted where it is a file
    with pytest.raises(UserError, match=re.escape(f"cannot read {linked / name}: ")):
        read(str(linked))


def test_run_files_read_back_as_written(tmp_path):
    """create_json writes once (a second call, by any process, leaves the first's); save_arrays and
    save_array read back whole; load_array refuses another dtype, Fortran order or a body of another size."""
    with rundir.RunFolder.claim(str(tmp_path / "w")) as folder:
        assert folder.create_json("sweep.json", {"first": 1}) is True
        assert folder.create_json("sweep.json", {"second": 2}) is False
        folder.save_arrays("records.npz", {"a": np.arange(3), "b": np.ones((2, 2), np.float16)})
        folder.save_array("test_losses.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    path = str(tmp_path / "w")
    assert rundir.read_json(path, "sweep.json") == {"first": 1}
    with np.load(tmp_path / "w" / "records.npz") as records:
        assert sorted(records) == ["a", "b"] and records["a"].tolist() == [0, 1, 2] and records["b"].dtype == np.float16
    loaded = rundir.load_array(path, "test_losses.npy", np.float32, (2, 3))
    assert loaded.shape == (2, 3) and loaded.tolist() == [[0, 1, 2], [3, 4, 5]]
    np.save(tmp_path / "w" / "f64.npy", np.zeros((2, 3), np.float64))
    np.save(tmp_path / "w" / "fortran.npy", np.asfortranarray(np.zeros((2, 3), np.float32)))
    for name in ("f64.npy", "fortran.npy"):
        with pytest.raises(UserError, match=f"cannot read {re.escape(path)}/{name}: holds"):
            rundir.load_array(path, name, np.float32, (2, 3))
    with open(tmp_path / "w" / "short.npy", "wb") as f:  # the header of 6 floats over the body of 5
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2, 3)})
        f.write(np.zeros(5, np.float32).tobytes())
    with open(tmp_path / "w" / "long.npy", "wb") as f:  # ... over the body of 6 and one byte more
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2, 3)})
        f.write(np.zeros(6, np.float32).tobytes() + b"\0")
    for name in ("short.npy", "long.npy"):
        with pytest.raises(UserError, match=f"{name}: its size does not match its header$"):
            rundir.load_array(path, name, np.float32, (2, 3))


def test_write_text_and_failed_reads_in_words(tmp_path):
    """What write_text writes is read back; a read through a link, or below a file, is one line
    with the OS's reason in words (the link's said as jaxseed's rule)."""
    with rundir.RunFolder.claim(str(tmp_path / "run")) as run:
        run.write_text("notes.md", "every stream seeded 42\n")
        assert (tmp_path / "run" / "notes.md").read_text() == "every stream seeded 42\n"
    (tmp_path / "elsewhere.json").write_text("{}")
    os.symlink(tmp_path / "elsewhere.json", tmp_path / "run" / "linked.json")
    with pytest.raises(UserError) as linked:
        rundir.read_json(str(tmp_path / "run"), "linked.json")
    assert str(linked.value) == (f"cannot read {tmp_path}/run/linked.json: it is a symbolic link, which jaxseed "
                                 "never follows")
    with pytest.raises(UserError) as below:
        rundir.read_json(str(tmp_path / "run" / "notes.md"), "manifest.json")
    assert str(below.value) == f"cannot read {tmp_path}/run/notes.md/manifest.json: Not a directory"


def test_overwrite_keeps_a_users_file_named_like_a_temporary_one(tmp_path):
    """Only a run's own temporary files (".NAME.tmp.*" of a name it writes) are removed, not any with ".tmp."."""
    with rundir.RunFolder.claim(str(tmp_path)) as run:
        run.write_json("manifest.json", {"status": "finished"})
    for name in ("mine.tmp.txt", ".notes.tmp.1", ".manifest.json.tmp.abc"):
        (tmp_path / name).write_text("x")
    rundir.RunFolder.claim(str(tmp_path), overwrite=True).release()
    assert sorted(os.listdir(tmp_path)) == sorted([rundir.MARKER, "mine.tmp.txt", ".notes.tmp.1"])


def test_failed_writes_and_removals_in_words(tmp_path, monkeypatch):
    """A write onto a folder, and a removal the OS refuses, are one line each: what, where, why."""
    with rundir.RunFolder.claim(str(tmp_path / "run")) as run:
        (tmp_path / "run" / "notes.md").mkdir()
        with pytest.raises(UserError) as written:
            run.write_text("notes.md", "x")
        assert str(written.value) == f"cannot write {tmp_path}/run/notes.md: Is a directory"
        (tmp_path / "run" / "checkpoints").mkdir()

    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(rundir.shutil, "rmtree", refused)
    with pytest.raises(UserError) as removed:
        rundir.RunFolder.claim(str(tmp_path / "run"), overwrite=True)
    assert str(removed.value) == f"cannot remove {tmp_path}/run/checkpoints: Permission denied"


def test_files_that_are_not_what_jaxseed_writes_in_words(tmp_path):
    """Each refusal of a run file says which file and what is wrong with it."""
    def refusal(name, text, read=lambda name: rundir.read_json(str(tmp_path), name)):
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError) as refused:
            read(name)
        return str(refused.value)

    assert refusal("a.json", "[1, 2]") == f"{tmp_path}/a.json: expected a JSON object"
    nested = refusal("b.json", "[" * 100_000)  # Python's JSON reader gives up: its words cut at 80 characters
    assert nested == (f"cannot read {tmp_path}/b.json: not valid JSON (maximum recursion depth exceeded while "
                      "decoding a JSON array from a unicode stri)")
    lines = lambda name: rundir.read_lines(str(tmp_path), name, rundir.METRICS_FIELDS)  # noqa: E731
    assert refusal("c.jsonl", '{"epoch": true, "step": 3}\n', lines) == (
        f"cannot read {tmp_path}/c.jsonl line 1: {tmp_path}/c.jsonl line 1: field 'epoch' is missing or not of the "
        "expected type")  # a bool is no epoch number, though Python counts it an int
    manifest = {"config": {}, "streams": {}}
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    with pytest.raises(UserError) as unfinished:
        rundir.read_manifest(str(tmp_path), finished=True)
    assert str(unfinished.value) == f"the run in {tmp_path} has not finished; nothing to compare"
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "status": "finished"}))
    with pytest.raises(UserError) as unhashed:
        rundir.read_manifest(str(tmp_path), finished=True)
    assert str(unhashed.value) == f"{tmp_path}/manifest.json: field 'param_hash' is missing or not of the expected type"


def test_appended_lines_accumulate_in_a_file_readable_by_all(tmp_path):
    """append_lines makes the file (rw-r--r-- under umask 022) and appends: every call's rows stay,
    one JSON object per line."""
    previous = os.umask(0o022)
    folder = rundir.RunFolder.claim(str(tmp_path / "run"))
    try:
        folder.append_lines("metrics.jsonl", [{"epoch": 1}])
        folder.append_lines("metrics.jsonl", [{"epoch": 2}, {"epoch": 3}])
    finally:
        os.umask(previous)
        folder.release()
    path = tmp_path / "run" / "metrics.jsonl"
    assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n'
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_an_append_through_a_planted_link_names_the_file(tmp_path):
    folder = rundir.RunFolder.claim(str(tmp_path / "run"))
    try:
        os.symlink(tmp_path / "elsewhere", tmp_path / "run" / "metrics.jsonl")
        with pytest.raises(UserError, match=f"^cannot write {re.escape(str(tmp_path / 'run' / 'metrics.jsonl'))}: "
                                            "it is a symbolic link, which jaxseed never follows$"):
            folder.append_lines("metrics.jsonl", [{"epoch": 1}])
    finally:
        folder.release()
    assert not (tmp_path / "elsewhere").exists()


def test_an_os_error_without_its_own_words_is_said_as_python_says_it():
    assert str(rundir._os_error("f.json", OSError("the disk went away"))) == "cannot write f.json: the disk went away"


def test_an_object_array_is_never_pickled_into_a_run(tmp_path):
    folder = rundir.RunFolder.claim(str(tmp_path / "run"))
    try:
        with pytest.raises(ValueError, match="allow_pickle=False"):
            folder.save_array("outputs.npy", np.array([{"a": 1}], object))
    finally:
        folder.release()
    left = os.listdir(tmp_path / "run") if (tmp_path / "run").exists() else []  # a folder left empty is removed
    assert not [name for name in left if "outputs" in name]


def test_kept_lines_drop_a_last_line_cut_short_by_a_kill(tmp_path):
    folder = rundir.RunFolder.claim(str(tmp_path / "run"))
    try:
        (tmp_path / "run" / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
        assert folder.kept_lines("metrics.jsonl", lambda row: True, {"epoch": int}) == [{"epoch": 1}, {"epoch": 2}]
    finally:
        folder.release()


def test_an_array_followed_by_much_more_is_refused_without_reading_it(tmp_path):
    """The body is read by its header's size: bytes past it are refused, not read (64 MiB here)."""
    import tracemalloc

    np.save(tmp_path / "losses.npy", np.zeros(4, np.float32))
    with open(tmp_path / "losses.npy", "ab") as f:
        f.write(bytes(64 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="losses.npy: its size does not match its header"):
            rundir.load_array(str(tmp_path), "losses.npy", np.float32, (4,))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def _not_a_folder(target) -> str:
    return (f"^{re.escape(str(target))} is not a folder jaxseed made \\(a link or a file\\); remove it or choose "
            "another --workdir$")


def test_a_sub_folder_is_made_part_by_part_and_a_link_on_the_way_refused(tmp_path):
    """folder("a/b") makes a, then a/b; a link at a (to a folder elsewhere) or a file there is refused
    in words, and nothing is made through the link."""
    (tmp_path / "elsewhere").mkdir()
    folder = rundir.RunFolder.claim(str(tmp_path / "run"))
    try:
        made = folder.folder(os.path.join("a", "b"))
        assert made == str(tmp_path / "run" / "a" / "b") and os.path.isdir(made)
        os.symlink(tmp_path / "elsewhere", tmp_path / "run" / "c")
        with pytest.raises(UserError, match=_not_a_folder(tmp_path / "run" / "c")):
            folder.folder(os.path.join("c", "d"))
        (tmp_path / "run" / "e").write_text("a file")
        with pytest.raises(UserError, match=_not_a_folder(tmp_path / "run" / "e")):
            folder.folder("e")
    finally:
        folder.release()
    assert os.listdir(tmp_path / "elsewhere") == []


def test_a_process_that_does_not_write_makes_no_folder(tmp_path):
    (tmp_path / "run").mkdir()
    folder = rundir.RunFolder.claim(str(tmp_path / "run"), writer=False)
    try:
        assert folder.folder("checkpoints") == str(tmp_path / "run" / "checkpoints")
    finally:
        folder.release()
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("planted", ["folder", "link"])
def test_a_folder_made_by_another_shard_a_moment_ago_is_checked_again(tmp_path, monkeypatch, planted):
    """Between the check and mkdir another process made the name: its folder is taken, a link refused."""
    (tmp_path / "elsewhere").mkdir()
    real_mkdir = os.mkdir

    def raced(target, *args):
        (real_mkdir(target) if planted == "folder" else os.symlink(tmp_path / "elsewhere", target))
        raise FileExistsError(target)

    folder = rundir.RunFolder.claim(str(tmp_path / "run"))
    monkeypatch.setattr(rundir.os, "mkdir", raced)
    try:
        if planted == "folder":
            assert folder.folder("runs") == str(tmp_path / "run" / "runs")
        else:
            with pytest.raises(UserError, match=_not_a_folder(tmp_path / "run" / "runs")):
                folder.folder("runs")
    finally:
        monkeypatch.undo()
        folder.release()


def test_a_folder_that_cannot_be_made_says_why(tmp_path, monkeypatch):
    def refused(target, *args):
        raise PermissionError(errno.EACCES, "Permission denied", target)

    folder = rundir.RunFolder.claim(str(tmp_path / "run"))
    monkeypatch.setattr(rundir.os, "mkdir", refused)
    try:
        with pytest.raises(UserError, match=f"^cannot write {re.escape(str(tmp_path / 'run' / 'runs'))}: "
                                            "Permission denied$"):
            folder.folder("runs")
    finally:
        monkeypatch.undo()
        folder.release()


def test_json_is_written_indented_with_sorted_keys_and_created_once(tmp_path):
    folder = rundir.RunFolder.claim(str(tmp_path / "run"))
    try:
        folder.write_json("a.json", {"b": 1, "a": [1, 2]})
        assert (tmp_path / "run" / "a.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
        assert folder.create_json("c.json", {"first": True}) is True
        assert folder.create_json("c.json", {"second": True}) is False  # of several creators, one writes it
    finally:
        folder.release()
    assert json.loads((tmp_path / "run" / "c.json").read_text()) == {"first": True}


def test_a_file_is_read_whole_up_to_its_cap_and_refused_past_it_unread(tmp_path):
    """Bytes up to the cap are read as they are; one more is refused in MB, and what lies past the
    cap is never read (32 MiB here)."""
    import tracemalloc

    limit, path = 1 << 20, tmp_path / "f.json"
    path.write_bytes(b"\xff" * limit)
    assert rundir._open_for_reading(str(path), limit) == b"\xff" * limit
    path.write_bytes(b"x" * (3 << 20) + b"x")
    with pytest.raises(UserError, match=f"^cannot read {re.escape(str(path))}: larger than 3 MB$"):
        rundir._open_for_reading(str(path), 3 << 20)
    path.write_bytes(bytes(limit + (32 << 20)))
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="larger than 1 MB"):
            rundir._open_for_reading(str(path), limit)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_a_folder_of_another_kind_is_refused_in_words(tmp_path):
    """A folder a study claimed (its marker says so), or a run's folder that holds a study's files, is no run's."""
    claimed = tmp_path / "claimed"
    study = rundir.RunFolder.claim(str(claimed), "study", resume=True)
    (claimed / "notes.txt").write_text("a user's file: the claim leaves its marker")
    study.release()
    with pytest.raises(UserError, match=f"^workdir {re.escape(str(claimed))} holds a jaxseed study, not a run$"):
        rundir.RunFolder.claim(str(claimed), "run", resume=True)
    mixed = tmp_path / "mixed"
    run = rundir.RunFolder.claim(str(mixed), "run")
    (mixed / "sweep.json").write_text("{}")  # a study's file in a run's folder
    run.release()
    with pytest.raises(UserError, match=f"^workdir {re.escape(str(mixed))} holds a jaxseed study, not a run$"):
        rundir.RunFolder.claim(str(mixed), "run", resume=True)


def test_a_file_is_written_beside_itself_then_renamed_with_the_umasks_mode(tmp_path):
    """The temporary file lies in the target's folder, named after it (so a rename is atomic and
    remove_outputs knows it), and the file gets the mode the umask gives any new file."""
    folder = rundir.RunFolder.claim(str(tmp_path / "run"))
    seen = []
    try:
        folder.save_picture("curves.png", lambda f: seen.extend(os.listdir(tmp_path / "run")))
    finally:
        folder.release()
    assert [name for name in seen if name.startswith(".curves.png.tmp.")]
    assert os.stat(tmp_path / "run" / "curves.png").st_mode & 0o777 == 0o666 & ~rundir._UMASK


def test_a_temporary_file_that_cannot_be_made_says_why(tmp_path, monkeypatch):
    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    folder = rundir.RunFolder.claim(str(tmp_path / "run"))
    monkeypatch.setattr(rundir.tempfile, "mkstemp", refused)
    try:
        with pytest.raises(UserError, match=f"^cannot write {re.escape(str(tmp_path / 'run' / 'a.json'))}: "
                                            "Permission denied$"):
            folder.write_json("a.json", {})
    finally:
        monkeypatch.undo()
        folder.release()


def test_a_claim_that_wrote_nothing_leaves_nothing_and_releases_once(tmp_path):
    folder = rundir.RunFolder.claim(str(tmp_path / "run"))
    holder = json.loads((tmp_path / "run" / rundir.MARKER).read_text())
    assert holder["kind"] == "run"
    assert re.fullmatch(r"process \d+ on \S+ since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", holder["holder"])
    folder.release()
    folder.release()  # a second release does nothing
    assert not (tmp_path / "run").exists()
    gone = rundir.RunFolder.claim(str(tmp_path / "gone"))
    shutil.rmtree(tmp_path / "gone")  # the folder removed under a claim: releasing it still works
    gone.release()


@pytest.mark.parametrize("text, holder, kind", [
    ("", None, None),
    ("[1]", None, None),
    ("not JSON", "another process", None),
    ('{"kind": "study", "holder": "process 7"}', "process 7", "study"),
])
def test_a_markers_record_is_read_as_input(tmp_path, text, holder, kind):
    path = tmp_path / rundir.MARKER
    path.write_text(text)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert rundir._read_holder(fd) == holder and rundir._read_holder(fd, "kind") == kind
    finally:
        os.close(fd)


def test_a_process_that_does_not_write_creates_nothing(tmp_path):
    """A multi-process run's other processes: create_json says it wrote nothing (the writer's header is the one
    checked), and no file appears."""
    folder = rundir.RunFolder.claim(str(tmp_path / "run"), writer=False)
    assert folder.create_json("c.json", {"first": True}) is False
    assert not (tmp_path / "run").exists()


def test_the_markers_record_is_one_fixed_length_json_line_and_a_failed_write_is_named(tmp_path, monkeypatch):
    path = tmp_path / rundir.MARKER
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        monkeypatch.setattr(rundir.socket, "gethostname", lambda: "h" * 500)  # a holder longer than the record keeps
        rundir._write_holder(fd, "study")
        text = path.read_text()
        assert len(text) == rundir._HOLDER_BYTES and text.startswith('{"kind": "study", "holder": "process ')
        assert len(json.loads(text)["holder"]) == 400 and rundir._read_holder(fd, "kind") == "study"
    finally:
        os.close(fd)
    read_only = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(UserError, match=f"^cannot write the workdir's {re.escape(rundir.MARKER)}: Bad file descriptor$"):
            rundir._write_holder(read_only, "run")
    finally:
        os.close(read_only)


def test_a_studys_shards_share_its_claim_and_a_run_is_refused(tmp_path):
    """Shards of one study claim its folder together (a shared lock); a run's claim there is exclusive."""
    first = rundir.RunFolder.claim(str(tmp_path / "study"), "study")
    second = rundir.RunFolder.claim(str(tmp_path / "study"), "study", resume=True)
    with pytest.raises(UserError, match="is in use by process"):
        rundir.RunFolder.claim(str(tmp_path / "study"), "run", resume=True)
    second.release()
    first.release()
    with rundir.RunFolder.claim(str(tmp_path / "run")):
        with pytest.raises(UserError, match="is in use by process"):
            rundir.RunFolder.claim(str(tmp_path / "run"), "study", resume=True)


def test_a_claim_leaves_only_what_it_made(tmp_path):
    """Released with nothing written: a folder the claim made is gone, a folder the user made stays, empty;
    the marker a claim makes is the user's umask's 0644."""
    folder = rundir.RunFolder.claim(str(tmp_path / "fresh"))
    assert (tmp_path / "fresh" / rundir.MARKER).stat().st_mode & 0o777 == 0o644 & ~rundir._UMASK
    folder.release()
    assert not (tmp_path / "fresh").exists()
    (tmp_path / "mine").mkdir()
    rundir.RunFolder.claim(str(tmp_path / "mine")).release()
    assert (tmp_path / "mine").is_dir() and not os.listdir(tmp_path / "mine")


def test_a_claim_that_cannot_make_its_folder_or_marker_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=f"^cannot create workdir {re.escape(str(tmp_path / 'file' / 'run'))}: "
                                        "Not a directory$"):
        rundir.RunFolder.claim(str(tmp_path / "file" / "run"))
    marker = tmp_path / "run" / rundir.MARKER
    real_open = os.open

    def refused(path, *args, **kwargs):
        if path == str(marker):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(rundir.os, "open", refused)
        with pytest.raises(UserError, match=f"^cannot write {re.escape(str(marker))}: Permission denied$"):
            rundir.RunFolder.claim(str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # the folder it had made is removed again
    # A link planted as the marker between the check and the open (a race): opened without following it.
    (tmp_path / "raced").mkdir()
    (tmp_path / "elsewhere").write_text("")
    os.symlink(tmp_path / "elsewhere", tmp_path / "raced" / rundir.MARKER)
    monkeypatch.setattr(rundir.os.path, "islink", lambda path: False)
    with pytest.raises(UserError, match=f"^cannot write {re.escape(str(tmp_path / 'raced' / rundir.MARKER))}: it is a "
                                        "symbolic link, which jaxseed never follows$"):
        rundir.RunFolder.claim(str(tmp_path / "raced"), resume=True)
    assert (tmp_path / "elsewhere").read_text() == ""


def test_claims_refused_in_words(tmp_path, monkeypatch):
    """A file where the folder should be; a folder of the user's (its first three names, then ...); a run
    there already without --resume or --overwrite; a folder that cannot be listed."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=f"^workdir {re.escape(str(tmp_path / 'file'))} exists and is not a folder$"):
        rundir.RunFolder.claim(str(tmp_path / "file"))
    users = tmp_path / "users"
    users.mkdir()
    for name in ("d", "c", "b", "a"):
        (users / name).write_text("x")
    with pytest.raises(UserError, match=f"^workdir {re.escape(str(users))} holds files jaxseed did not write "
                                        "\\(a, b, c, ...\\); choose a new or empty folder$"):
        rundir.RunFolder.claim(str(users))
    (users / "d").unlink()  # three: all named
    with pytest.raises(UserError, match=f"^workdir {re.escape(str(users))} holds files jaxseed did not write "
                                        "\\(a, b, c\\); choose a new or empty folder$"):
        rundir.RunFolder.claim(str(users))
    run = rundir.RunFolder.claim(str(tmp_path / "run"))
    run.write_json("manifest.json", {})
    run.release()
    with pytest.raises(UserError, match="already holds a run; pass --overwrite to start afresh, --resume to "
                                        "continue it, or choose another --workdir$"):
        rundir.RunFolder.claim(str(tmp_path / "run"))
    assert rundir.RunFolder.claim(str(tmp_path / "run"), "study", writer=False).kind == "study"

    def unlisted(path):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(rundir.os, "listdir", unlisted)
    with pytest.raises(UserError, match=f"^cannot read {re.escape(str(tmp_path / 'run'))}: Permission denied$"):
        rundir.RunFolder.claim(str(tmp_path / "run"), resume=True)
