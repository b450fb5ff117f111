"""Download and cache, offline: a local HTTP server (or a file:// URL) serves the MNIST slice, or a CIFAR-10
archive in the real format, written by the tests."""

import functools
import gzip
import hashlib
import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import MNIST_SLICE_DIR, PROJECT_ROOT
from jaxseed import data, download
from jaxseed.errors import UserError
from test_data import write_cifar10

# sha256 of the slice's decompressed files (see tests/data/cut_mnist_slice.py).
SLICE_SHA256 = {
    "train-images-idx3-ubyte": "729d340c0177402770b27c04f817dfb40ed8844459b35a9f11ae21067b05cf19",
    "train-labels-idx1-ubyte": "90795ea2219655a7281c0d6756d0ae8a33bebac7ec84bac89bbdcc5e3baa9f8c",
    "t10k-images-idx3-ubyte": "de0a55d8eb2a23fce4f596c5234b08b9c8ee685583a2b0e52f3a78eca48f9d89",
    "t10k-labels-idx1-ubyte": "60e902e82445d902e245e1b039469f36936d63cb28e81527a7bbba247c240af3",
}
# MNIST's source, with the slice's checksums (of the decompressed files) and MNIST's size caps.
SLICE = download.SOURCES["mnist"]._replace(files=download.idx_files(SLICE_SHA256, "content"))


class Mirror:
    """An HTTP server on 127.0.0.1 serving a copy of the slice, to alter per test.

    Files named in ``short`` are sent with their full Content-Length but only
    half of their bytes, as when a connection drops mid-download. Files named
    in ``endless`` are a stream of zeros with no Content-Length, one KiB every
    so many seconds (the value), for 64 MiB or 10 s.
    """

    def __init__(self, folder):
        self.folder, self.short, self.endless = folder, set(), {}
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                delay = mirror.endless.get(self.path.lstrip("/"))
                if delay is None:
                    return super().do_GET()
                self.send_response(200)
                self.end_headers()
                stop = time.monotonic() + 10  # endless for a client that works; a test that fails ends
                try:
                    for _ in range(1 << 16):
                        self.wfile.write(bytes(1024))
                        time.sleep(delay)
                        if time.monotonic() > stop:
                            break
                except OSError:  # the client hung up
                    pass

            def copyfile(self, source, outputfile):
                body = source.read()
                outputfile.write(body[: len(body) // 2] if self.path.lstrip("/") in mirror.short else body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def mirror(tmp_path):
    served = tmp_path / "served"
    shutil.copytree(MNIST_SLICE_DIR, served)
    mirror = Mirror(served)
    yield mirror
    mirror.stop()  # a second stop (the test stopped it already) returns at once


def cached_files(folder):
    """Every file in the cache, temporary ones included."""
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_download_fills_the_cache_then_works_offline(mirror, tmp_path):
    cache = tmp_path / "cache" / "mnist"
    folder = download.download(str(cache), SLICE, mirror.url)
    assert folder == str(cache)
    assert cached_files(cache) == sorted(name + ".gz" for name in SLICE_SHA256)
    mirror.stop()
    again = data.load_idx_dir(download.download(str(cache), SLICE, mirror.url))
    reference = data.load_idx_dir(MNIST_SLICE_DIR)
    for ours, theirs in zip(again.arrays(), reference.arrays()):
        np.testing.assert_array_equal(ours, theirs)


def test_another_gzip_wrapper_of_the_same_bytes_is_accepted(mirror, tmp_path):
    served = mirror.folder / "train-labels-idx1-ubyte.gz"
    rewrapped = gzip.compress(gzip.decompress(served.read_bytes()), compresslevel=1, mtime=123456789)
    assert rewrapped != served.read_bytes()
    served.write_bytes(rewrapped)
    cache = tmp_path / "cache"
    download.download(str(cache), SLICE, mirror.url)
    assert (cache / "train-labels-idx1-ubyte.gz").read_bytes() == rewrapped


def test_the_gzip_itself_can_be_what_is_checked(mirror, tmp_path):
    """Fashion-MNIST's checksums are those of the .gz files: then the download's own bytes are hashed."""
    table = {name: hashlib.sha256((mirror.folder / (name + ".gz")).read_bytes()).hexdigest()
             for name in SLICE_SHA256}
    cache = tmp_path / "cache"
    download.download(str(cache), SLICE._replace(files=download.idx_files(table, "download")), mirror.url)
    assert cached_files(cache) == sorted(name + ".gz" for name in table)


def test_checksum_mismatch_is_an_error_and_the_file_is_not_kept(mirror, tmp_path):
    served = mirror.folder / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(served.read_bytes()))
    raw[8] = (raw[8] + 1) % 10  # one label changed: still a valid IDX file
    served.write_bytes(gzip.compress(bytes(raw)))
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="checksum mismatch for .*train-labels-idx1-ubyte.gz.*deleted"):
        download.download(str(cache), SLICE, mirror.url)
    assert cached_files(cache) == ["train-images-idx3-ubyte.gz"]  # verified before it; kept, and whole


@pytest.mark.parametrize("cut, message", [
    ("gzip", "truncated or not gzip"),  # the server sends a cut file whole
    ("connection", "truncated: .* of .* bytes"),  # the server sends fewer bytes than announced
])
def test_truncated_download_is_an_error_and_leaves_nothing(mirror, tmp_path, cut, message):
    name = "train-images-idx3-ubyte.gz"  # fetched first: nothing is in the cache before it
    if cut == "gzip":
        served = mirror.folder / name
        served.write_bytes(served.read_bytes()[:-1000])
    else:
        mirror.short.add(name)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=message):
        download.download(str(cache), SLICE, mirror.url)
    assert cached_files(cache) == []


def test_connection_refused_points_to_data_dir_and_mirror(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="cannot download .*refused.*--data-dir DIR.*JAXSEED_MNIST_MIRROR"):
        download.download(str(cache), SLICE, f"http://127.0.0.1:{port}")
    assert cached_files(cache) == []


def test_unwritable_cache_is_an_error(mirror, tmp_path):
    """A cache folder below a regular file cannot be created, even by root (the tests may run as root)."""
    (tmp_path / "file").write_text("mine")
    with pytest.raises(UserError, match="cannot create the data cache folder .*JAXSEED_DATA_DIR"):
        download.download(str(tmp_path / "file" / "mnist"), SLICE, mirror.url)
    assert (tmp_path / "file").read_text() == "mine"


# Caps for the slice: above its files, even decompressed (the largest holds 1,568,016 bytes).
SLICE_CAPPED = SLICE._replace(files=tuple(file._replace(max_bytes=2 << 20) for file in SLICE.files))


@pytest.mark.parametrize("how, message", [
    ("announced", "the server announces 1073741824 bytes, at most 50331648 expected"),
    ("endless", "more than 2097152 bytes; the partial file was deleted"),
    ("bomb", "its content is more than 2097152 bytes"),  # a small gzip that unpacks to 64 MB
], ids=["announced", "endless", "bomb"])
def test_oversized_download_is_refused_and_leaves_nothing(mirror, tmp_path, how, message):
    name = "train-images-idx3-ubyte.gz"  # fetched first: nothing is in the cache before it
    base_url, source = mirror.url, SLICE_CAPPED
    if how == "announced":  # a file:// mirror holding a sparse 1 GiB file, refused by its size, unread
        os.truncate(mirror.folder / name, 1 << 30)
        base_url, source = mirror.folder.as_uri(), SLICE
    elif how == "endless":
        mirror.endless[name] = 0
    else:
        (mirror.folder / name).write_bytes(gzip.compress(bytes(64 << 20), compresslevel=1))
    cache = tmp_path / "cache"
    start = time.monotonic()
    with pytest.raises(UserError, match=f"download of .*{name} is larger than expected: .*{message}"):
        download.download(str(cache), source, base_url)
    assert time.monotonic() - start < 10
    assert cached_files(cache) == []


def test_download_past_its_deadline_stops_and_leaves_nothing(mirror, tmp_path):
    """A mirror that trickles (one KiB every 20 ms, forever): each read is quick, the whole never ends."""
    mirror.endless["train-images-idx3-ubyte.gz"] = 0.02
    cache = tmp_path / "cache"
    start = time.monotonic()
    with pytest.raises(UserError, match=r"download of .*train-images-idx3-ubyte.gz took longer than its deadline "
                                        r"of 0.5 s \(.* bytes in\); the partial file was deleted.*MIRROR"):
        download.download(str(cache), SLICE_CAPPED._replace(deadline_s=0.5), mirror.url)
    assert time.monotonic() - start < 5
    assert cached_files(cache) == []


def _corrupt_content(path):
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[8] = (raw[8] + 1) % 10  # one label changed: still a valid IDX file in a valid gzip
    path.write_bytes(gzip.compress(bytes(raw)))


@pytest.mark.parametrize("corrupt, message", [
    (_corrupt_content, "fails its checksum \\(sha256 of its decompressed content is [0-9a-f]{64}, expected 9079"),
    (lambda path: path.write_bytes(path.read_bytes()[:-10]), "is truncated or not gzip"),
    (lambda path: (path.unlink(), os.mkfifo(path)), "is not a regular file"),
], ids=["content", "truncated", "fifo"])
def test_damaged_cached_file_is_deleted_and_downloaded_again(mirror, tmp_path, capsys, corrupt, message):
    cache = tmp_path / "cache"
    download.download(str(cache), SLICE, mirror.url)
    cached = cache / "train-labels-idx1-ubyte.gz"
    corrupt(cached)
    download.download(str(cache), SLICE, mirror.url)
    assert cached.is_file()  # before reading it: a FIFO would block
    assert cached.read_bytes() == (mirror.folder / cached.name).read_bytes()
    assert cached_files(cache) == sorted(name + ".gz" for name in SLICE_SHA256)
    assert re.fullmatch(f"jaxseed: {cached} in the data cache {message}.*; deleted it, downloading it again\n",
                        capsys.readouterr().err)


def test_damaged_cached_file_offline_is_deleted_and_reported(mirror, tmp_path, capsys):
    cache = tmp_path / "cache"
    download.download(str(cache), SLICE, mirror.url)
    _corrupt_content(cache / "t10k-labels-idx1-ubyte.gz")
    mirror.stop()
    with pytest.raises(UserError, match="cannot download .*t10k-labels-idx1-ubyte.gz"):
        download.download(str(cache), SLICE, mirror.url)
    assert "t10k-labels-idx1-ubyte.gz in the data cache fails its checksum" in capsys.readouterr().err
    assert "t10k-labels-idx1-ubyte.gz" not in cached_files(cache)


def test_link_planted_in_the_cache_is_replaced_not_followed(mirror, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("mine")
    (cache / "train-labels-idx1-ubyte.gz").symlink_to(victim)
    download.download(str(cache), SLICE, mirror.url)
    assert victim.read_text() == "mine" and not (cache / "train-labels-idx1-ubyte.gz").is_symlink()
    assert "train-labels-idx1-ubyte.gz in the data cache is truncated or not gzip" in capsys.readouterr().err


def test_cache_location(monkeypatch, tmp_path):
    for variable in ("JAXSEED_DATA_DIR", "TFDS_DATA_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert download.cache_root() == str(tmp_path / "home" / ".cache" / "jaxseed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.cache_root() == str(tmp_path / "xdg" / "jaxseed")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    assert download.cache_root() == str(tmp_path / "tfds" / "jaxseed")
    monkeypatch.setenv("JAXSEED_DATA_DIR", str(tmp_path / "mine"))
    assert download.cache_root() == str(tmp_path / "mine")


@pytest.mark.slow
def test_cli_wrong_checksum_is_one_line_and_caches_nothing(mirror, tmp_path):
    """The slice is not full MNIST: through the CLI its checksum fails as one line, exit code 2."""
    env = {**os.environ, "JAXSEED_MNIST_MIRROR": mirror.url, "JAXSEED_DATA_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "jaxseed.train", "--data", "mnist", "--epochs", "1",
         "--workdir", str(tmp_path / "run")],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "checksum mismatch" in result.stderr
    assert cached_files(tmp_path / "cache") == []


# --- CIFAR-10: a small archive in its real format, written by the tests (no package ships CIFAR-10) ---

@pytest.fixture
def cifar10_mirror(tmp_path):
    """A mirror serving a 240-record cifar-10-binary.tar.gz, and the Dataset it holds; the cache in tmp_path."""
    _, expected = write_cifar10(tmp_path / "served-cifar10")
    mirror = Mirror(tmp_path / "served-cifar10")
    yield mirror, expected
    mirror.stop()


def _use_mirror(monkeypatch, tmp_path, url):
    monkeypatch.setenv("JAXSEED_CIFAR10_MIRROR", url)
    monkeypatch.setenv("JAXSEED_DATA_DIR", str(tmp_path / "cache"))


def _trust(monkeypatch, archive):
    """Make the built-in CIFAR-10 source expect ``archive``: its sha256, and its size as the cap."""
    packed = archive.read_bytes()
    file = download.CIFAR10_FILE._replace(sha256=hashlib.sha256(packed).hexdigest(), max_bytes=len(packed))
    monkeypatch.setitem(download.SOURCES, "cifar10", download.SOURCES["cifar10"]._replace(files=(file,)))


def _assert_same(dataset, expected):
    for ours, theirs in zip(dataset.arrays(), expected.arrays(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("scheme", ["http", "file"])
def test_cifar10_download_fills_the_cache_then_works_offline(cifar10_mirror, tmp_path, monkeypatch, scheme):
    mirror, expected = cifar10_mirror
    served = mirror.folder / "cifar-10-binary.tar.gz"
    _trust(monkeypatch, served)
    _use_mirror(monkeypatch, tmp_path, mirror.url if scheme == "http" else mirror.folder.as_uri())
    _assert_same(data.load("cifar10"), expected)
    cached = tmp_path / "cache" / "cifar10" / "cifar-10-binary.tar.gz"
    assert cached_files(tmp_path / "cache") == ["cifar-10-binary.tar.gz"]
    assert cached.read_bytes() == served.read_bytes()
    mirror.stop()
    served.unlink()
    _assert_same(data.load("cifar10", train_limit=50), expected._replace(
        train={name: array[:50] for name, array in expected.train.items()}))


def test_cifar10_truncated_download_leaves_nothing(cifar10_mirror, tmp_path, monkeypatch):
    mirror, _ = cifar10_mirror
    mirror.short.add("cifar-10-binary.tar.gz")
    _trust(monkeypatch, mirror.folder / "cifar-10-binary.tar.gz")
    _use_mirror(monkeypatch, tmp_path, mirror.url)
    with pytest.raises(UserError, match="download of .*cifar-10-binary.tar.gz is truncated: [0-9]+ of [0-9]+ bytes"):
        data.load("cifar10")
    assert cached_files(tmp_path / "cache") == []


def test_cifar10_checksum_mismatch_leaves_nothing(cifar10_mirror, tmp_path, monkeypatch):
    """With the real checksum: an archive in CIFAR-10's format that is not CIFAR-10 is refused."""
    mirror, _ = cifar10_mirror
    _use_mirror(monkeypatch, tmp_path, mirror.url)
    with pytest.raises(UserError, match=f"^checksum mismatch for {re.escape(mirror.url)}cifar-10-binary.tar.gz: "
                                        "sha256 is [0-9a-f]{64}, expected c4a38c50a1bc.*; the file was deleted"):
        data.load("cifar10")
    assert cached_files(tmp_path / "cache") == []


def test_cifar10_source_is_the_binary_version_tensorflow_datasets_registers():
    import tensorflow_datasets

    registry = os.path.join(os.path.dirname(tensorflow_datasets.__file__), "url_checksums", "cifar10.txt")
    with open(registry) as f:
        registered = {line.split("\t")[0]: line.split("\t")[1:3] for line in f if line.strip()}
    source = download.SOURCES["cifar10"]
    assert registered[source.url + download.CIFAR10_FILE.name] == [str(download.CIFAR10_FILE.max_bytes),
                                                                  download.CIFAR10_FILE.sha256]
    assert download.CIFAR10_FILE.checked == "download" and source.mirror_variable == "JAXSEED_CIFAR10_MIRROR"


@pytest.mark.slow
def test_cli_cifar10_wrong_checksum_is_one_line_and_caches_nothing(cifar10_mirror, tmp_path):
    mirror, _ = cifar10_mirror
    env = {**os.environ, "JAXSEED_CIFAR10_MIRROR": mirror.url, "JAXSEED_DATA_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "jaxseed.train", "--data", "cifar10", "--epochs", "1",
         "--workdir", str(tmp_path / "run")],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "checksum mismatch" in result.stderr and "cifar-10-binary.tar.gz" in result.stderr
    assert cached_files(tmp_path / "cache") == []
