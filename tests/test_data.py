"""Data sources: raw IDX files (a real MNIST slice and corrupted copies), CIFAR-10's binary format (files the
tests write), .npz files (a real Fashion-MNIST cut and crafted ones), TFDS offline, synthetic."""

import gzip
import hashlib
import io
import os
import re
import shutil
import tarfile
import tracemalloc
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import MNIST_SLICE_DIR, PROJECT_ROOT
from jaxseed import data, loop, streams
from jaxseed.config import Config
from jaxseed.errors import UserError


@pytest.fixture(scope="module")
def mnist():
    return data.load_idx_dir(MNIST_SLICE_DIR)


def test_real_mnist_idx(mnist):
    assert mnist.train["x"].shape == (2000, 28, 28, 1) and mnist.train["x"].dtype == np.uint8
    assert mnist.test["x"].shape == (500, 28, 28, 1) and mnist.test["x"].dtype == np.uint8
    assert mnist.train["y"].shape == (2000,) and mnist.train["y"].dtype == np.int32
    assert mnist.train["y"][:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first labels
    assert mnist.test["y"][:5].tolist() == [7, 2, 1, 0, 4]
    for labels in (mnist.train["y"], mnist.test["y"]):
        assert set(np.unique(labels)) == set(range(10))
    assert 30 < mnist.train["x"].mean() < 40
    assert data.classes("mnist", mnist) == 10


def test_data_hash_covers_every_array_in_a_fixed_order():
    """A run's data hash is computed over ``arrays()``: x, y and the rest of the training split, then
    the test split's (for images and labels the order the reference data hashes were taken in)."""
    train = {"x": np.zeros(2), "y": np.ones(2), "mask": np.full(2, 2.0)}
    test = {"x": np.full(1, 3.0), "y": np.full(1, 4.0), "mask": np.full(1, 5.0)}
    assert [array[0] for array in data.Dataset(train, test).arrays()] == [0, 1, 2, 3, 4, 5]


@pytest.mark.slow
def test_cnn_learns_real_digits(tmp_path):
    """One short epoch on the slice must beat chance (10%) by far: catches a wrong reader, labels or model."""
    config = Config(data_dir=MNIST_SLICE_DIR, epochs=1, batch_size=64, augment="none", warmup_epochs=0.1)
    info = loop.train_and_evaluate(config, {name: 0 for name in streams.STREAMS}, str(tmp_path), progress=False)
    assert info["final"]["test_accuracy"] > 0.8, info["final"]


@pytest.fixture
def mnist_copy(tmp_path):
    """Uncompressed copies of the four slice files, to corrupt."""
    for name in os.listdir(MNIST_SLICE_DIR):
        with gzip.open(os.path.join(MNIST_SLICE_DIR, name)) as src, open(tmp_path / name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    return tmp_path


def _rewrite(path, transform):
    raw = path.read_bytes()
    path.write_bytes(transform(raw))


@pytest.mark.parametrize("target, transform, message", [
    ("train-images-idx3-ubyte", lambda raw: b"\x00\x00\x09\x03" + raw[4:],
     "{D}/train-images-idx3-ubyte is not an IDX file of unsigned bytes with 3 dimension(s) (bad magic number)"),
    ("t10k-labels-idx1-ubyte", lambda raw: b"\x00\x00\x08\x03" + raw[4:],
     "{D}/t10k-labels-idx1-ubyte is not an IDX file of unsigned bytes with 1 dimension(s) (bad magic number)"),
    ("train-images-idx3-ubyte", lambda raw: raw[:-100],
     "{D}/train-images-idx3-ubyte is truncated: header gives shape (2000, 28, 28) (1568000 bytes), file has 1567900"),
    ("train-labels-idx1-ubyte", lambda raw: raw[:6], "{D}/train-labels-idx1-ubyte is truncated: its header is incomplete"),
    ("train-images-idx3-ubyte", lambda raw: raw[:10],  # two of its three sizes missing
     "{D}/train-images-idx3-ubyte is truncated: its header is incomplete"),
    ("t10k-images-idx3-ubyte", lambda raw: raw + b"\x00", "{D}/t10k-images-idx3-ubyte is longer than its header says: "
                                                          "header gives shape (500, 28, 28) (392000 bytes), more follow"),
    ("t10k-labels-idx1-ubyte",
     lambda raw: raw[:4] + (499).to_bytes(4, "big") + raw[8:-1], "{D}: test split has 500 images but 499 labels"),
    ("t10k-images-idx3-ubyte", lambda raw: raw[:12] + (27).to_bytes(4, "big") + raw[16:],
     "{D}/t10k-images-idx3-ubyte: each example is 28x27, expected 28x28"),
    ("train-labels-idx1-ubyte", lambda raw: raw[:8] + b"\x0c" + raw[9:],
     "{D}/train-labels-idx1-ubyte: labels go up to 12, expected 0..9"),
    ("train-labels-idx1-ubyte", lambda raw: raw[:8] + b"\x0a" + raw[9:],  # MNIST's classes are 0..9, whatever the data
     "{D}/train-labels-idx1-ubyte: labels go up to 10, expected 0..9"),
    ("train-labels-idx1-ubyte", lambda raw: raw[:4] + b"\xff" * 4 + raw[8:], "{D}/train-labels-idx1-ubyte: its header "
                                                                             "claims 4294967295 examples, more than the "
                                                                             "1000000 this reader accepts"),
])
def test_corrupt_idx_is_a_clear_error(mnist_copy, target, transform, message):
    _rewrite(mnist_copy / target, transform)
    with pytest.raises(UserError, match=f"^{re.escape(message.format(D=mnist_copy))}$"):
        data.load_idx_dir(str(mnist_copy))


def test_an_idx_file_of_exactly_the_most_examples_is_read(mnist_copy):
    path = str(mnist_copy / "t10k-labels-idx1-ubyte")
    assert data.read_idx(path, (), max_examples=500).shape == (500,)
    with pytest.raises(UserError, match=f"^{re.escape(path)}: its header claims 500 examples, more than the 499 this "
                                        "reader accepts$"):
        data.read_idx(path, (), max_examples=499)


def _idx_header(*shape):
    return bytes((0, 0, 8, len(shape))) + b"".join(size.to_bytes(4, "big") for size in shape)


@pytest.mark.parametrize("target, shape, message", [
    ("train-images-idx3-ubyte", (2**31, 2**31, 4), "each example is 2147483648x4, expected 28x28"),
    ("train-labels-idx1-ubyte", (2**32 - 1,), "its header claims 4294967295 examples, more than the 1000000"),
], ids=["images", "labels"])
def test_huge_header_is_refused_before_the_body(mnist_copy, target, shape, message):
    """The body is a gzip stream cut short: reading it would fail otherwise ("cannot read IDX file")."""
    body = np.random.default_rng(0).integers(0, 256, 1 << 20, np.uint8).tobytes()  # incompressible
    (mnist_copy / target).unlink()
    (mnist_copy / (target + ".gz")).write_bytes(gzip.compress(_idx_header(*shape) + body)[: 1 << 19])
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=f"^{re.escape(str(mnist_copy / target))}.gz: {message}") as error:
            data.load_idx_dir(str(mnist_copy))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20 and len(str(error.value).splitlines()) == 1


def test_data_behind_a_small_header_is_not_read(tmp_path):
    """A small .gz claiming one label but unpacking to 256 MB stops after the first byte too many."""
    path = tmp_path / "labels.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(_idx_header(1) + b"\x07")
        for _ in range(256):
            f.write(bytes(1 << 20))
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="labels.gz is longer than its header says: header gives shape "
                                            r"\(1,\) \(1 bytes\), more follow"):
            data.read_idx(str(path), ())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_corrupt_gzip_is_a_clear_error(mnist_copy):
    (mnist_copy / "train-labels-idx1-ubyte").unlink()
    (mnist_copy / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    with pytest.raises(UserError, match="cannot read IDX file"):
        data.load_idx_dir(str(mnist_copy))


def test_missing_dir_and_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.load_idx_dir(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="has no train-images-idx3-ubyte"):
        data.load_idx_dir(str(tmp_path))


def test_train_limit(mnist_copy):
    dataset = data.load("mnist", str(mnist_copy), train_limit=100)
    assert dataset.num_train == 100 and dataset.test["x"].shape[0] == 500
    assert data.load("mnist", str(mnist_copy), train_limit=1).num_train == 1
    assert data.load("mnist", str(mnist_copy), train_limit=2000).num_train == 2000
    for limit in (0, 2001):
        with pytest.raises(UserError, match=rf"^--train-limit must be in \[1, 2000\], got {limit}$"):
            data.load("mnist", str(mnist_copy), train_limit=limit)


def test_without_a_data_dir_the_download_cache_is_read(mnist_copy, tmp_path, monkeypatch):
    fetched = []
    write_cifar10(tmp_path / "cifar", "files")
    folders = {"mnist": str(mnist_copy), "cifar10": str(tmp_path / "cifar")}
    monkeypatch.setattr(data.download, "fetch", lambda name: fetched.append(name) or folders[name])
    assert data.load("mnist").num_train == 2000 and data.load("cifar10").num_train == 200
    assert fetched == ["mnist", "cifar10"]


def test_unknown_name_and_data_dir_combinations(mnist_copy):
    with pytest.raises(UserError, match="unknown data set 'emnist'; choose one of mnist, fashion_mnist, cifar10, "
                                        ".*npz:PATH"):
        data.load("emnist")
    for name in ("synthetic", "tfds:mnist", "npz:x.npz"):
        with pytest.raises(UserError, match=f"reads the files of mnist, fashion_mnist, cifar10; it does not "
                                            f"combine with --data {name}"):
            data.load(name, str(mnist_copy))
    with pytest.raises(UserError, match="unknown data set 'npz:'"):
        data.load("npz:")


def test_config_accepts_npz_paths():
    assert Config(data="npz:some/file.npz").data == "npz:some/file.npz"
    assert Config(data="cifar10").data == "cifar10"
    for name in ("npz:", "npz", "cifar100"):
        with pytest.raises(UserError, match=f"data must be one of mnist, .*, npz:PATH; got '{name}'"):
            Config(data=name)


def test_tfds_data_source_offline():
    with tfds.testing.mock_data(num_examples=24):
        dataset = data.load("tfds:mnist")
    assert dataset.train["x"].shape == (24, 28, 28, 1) and dataset.train["x"].dtype == np.uint8
    assert dataset.test["y"].shape == (24,) and dataset.test["y"].dtype == np.int32


def test_tfds_failure_points_to_the_download_and_data_dir(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Failed to establish a new connection\nmore detail")

    monkeypatch.setattr(tfds, "data_source", offline)
    with pytest.raises(UserError, match="^could not load 'fashion_mnist' through tensorflow-datasets "
                                        "\\(ConnectionError: Failed to establish a new connection\\); --data "
                                        "fashion_mnist downloads the raw IDX files without TensorFlow, and --data-dir "
                                        "DIR reads them from a folder with no network$"):
        data.load("tfds:fashion_mnist")


def test_tfds_reads_its_train_and_test_splits(monkeypatch):
    asked = []

    def source(name, split):
        asked.append((name, split))
        return [{"image": np.full((2, 2, 1), len(asked), np.uint8), "label": len(asked)}] * 3

    monkeypatch.setattr(tfds, "data_source", source)
    dataset = data.load("tfds:mnist")
    assert asked == [("mnist", "train"), ("mnist", "test")]
    assert dataset.train["y"].tolist() == [1, 1, 1] and dataset.test["x"][0, 0, 0, 0] == 2


def test_synthetic_is_fixed_and_learnable_shape():
    a, b = data.synthetic(), data.synthetic()
    for x, y in zip(a.arrays(), b.arrays()):
        np.testing.assert_array_equal(x, y)
    assert a.train["x"].shape == (2048, 28, 28, 1) and a.test["y"].shape == (512,)


# --- CIFAR-10's binary version: files written here in its format (no package ships CIFAR-10). ---

CIFAR10_NAMES = (*data.CIFAR10_TRAIN, data.CIFAR10_TEST)


def cifar10_batch(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray, bytes]:
    """``count`` random records: images uint8[N, 32, 32, 3] (HWC), labels, and the batch file's bytes.

    Encoded record by record, plane by plane, as CIFAR-10's page describes it, not with the reader's reshape.
    """
    images = rng.integers(0, 256, (count, 32, 32, 3), np.uint8)
    labels = rng.integers(0, 10, count, np.uint8)
    raw = bytearray()
    for label, image in zip(labels, images):
        raw.append(int(label))
        for channel in range(3):  # red, green, blue: 1024 bytes each, row-major
            raw += image[:, :, channel].tobytes()
    return images, labels, bytes(raw)


def tar_gz(path, members) -> None:
    """Write the tar.gz ``path``: each member a (name, bytes) pair, or a TarInfo written as is (a link)."""
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, raw = member
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def write_cifar10(folder, layout: str = "archive", count: int = 40, seed: int = 0):
    """Write a small CIFAR-10 (``count`` records in each of the six batches) into ``folder``, as
    ``cifar-10-binary.tar.gz`` ("archive"), its unpacked ``cifar-10-batches-bin/`` ("unpacked") or the six
    ``.bin`` files themselves ("files"); return the batches' bytes by name and the Dataset they hold."""
    rng = np.random.default_rng(seed)
    batches = {name: cifar10_batch(rng, count) for name in CIFAR10_NAMES}
    raw = {name: batch[2] for name, batch in batches.items()}
    os.makedirs(folder, exist_ok=True)
    if layout == "archive":
        tar_gz(os.path.join(folder, "cifar-10-binary.tar.gz"),
               [("cifar-10-batches-bin/batches.meta.txt", b"airplane\nautomobile\n"),
                *((f"cifar-10-batches-bin/{name}", bytes_) for name, bytes_ in raw.items()),
                ("cifar-10-batches-bin/readme.html", b"<html></html>")])
    else:
        target = os.path.join(folder, "cifar-10-batches-bin") if layout == "unpacked" else folder
        os.makedirs(target, exist_ok=True)
        for name, bytes_ in raw.items():
            with open(os.path.join(target, name), "wb") as f:
                f.write(bytes_)
    train = [batches[name] for name in data.CIFAR10_TRAIN]
    test = batches[data.CIFAR10_TEST]
    expected = data.labelled(np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train]),
                             test[0], test[1])
    return raw, expected


@pytest.mark.parametrize("layout", ["archive", "unpacked", "files"])
def test_cifar10_binary_format(tmp_path, layout):
    raw, expected = write_cifar10(tmp_path, layout)
    dataset = data.load("cifar10", str(tmp_path))
    assert dataset.train["x"].shape == (200, 32, 32, 3) and dataset.test["x"].shape == (40, 32, 32, 3)
    assert dataset.train["x"].dtype == np.uint8 and dataset.train["y"].dtype == np.int32
    assert all(array.flags.c_contiguous for array in dataset.arrays())
    for ours, theirs in zip(dataset.arrays(), expected.arrays()):
        np.testing.assert_array_equal(ours, theirs)
    first = raw["data_batch_1.bin"]  # pixel (row 2, column 3) of the first image: red, green, blue planes
    assert dataset.train["y"][0] == first[0]
    assert dataset.train["x"][0, 2, 3].tolist() == [first[1 + 2 * 32 + 3 + 1024 * c] for c in range(3)]
    assert data.classes("cifar10", dataset) == 10


def _symlink(name, target):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _archive_members(raw, **changes):
    """The members of a CIFAR-10 archive from ``raw``, with the named batches replaced (None: left out)."""
    members = []
    for name, bytes_ in {**raw, **changes}.items():
        if isinstance(bytes_, tarfile.TarInfo):
            members.append(bytes_)
        elif bytes_ is not None:
            members.append((f"cifar-10-batches-bin/{name}", bytes_))
    return members


@pytest.mark.parametrize("change, message", [
    (lambda raw: {"test_batch.bin": None},
     " has no cifar-10-batches-bin/test_batch.bin (expected CIFAR-10's binary version)"),
    (lambda raw: {"data_batch_5.bin": None, "test_batch.bin": None}, " has no cifar-10-batches-bin/data_batch_5.bin, "
                                                                     "cifar-10-batches-bin/test_batch.bin (expected "
                                                                     "CIFAR-10's binary version)"),
    (lambda raw: {"data_batch_3.bin": _symlink("cifar-10-batches-bin/data_batch_3.bin", "/etc/passwd")},
     ": cifar-10-batches-bin/data_batch_3.bin is not a regular file (a link?)"),
    (lambda raw: {"data_batch_2.bin": raw["data_batch_2.bin"][:-5]},
     ": cifar-10-batches-bin/data_batch_2.bin holds 122915 bytes, not a whole number of 3073-byte CIFAR-10 records "
     "(truncated, or not CIFAR-10's binary version?)"),
    (lambda raw: {"data_batch_4.bin": b""}, ": cifar-10-batches-bin/data_batch_4.bin holds 0 bytes, not a whole number "
                                            "of 3073-byte CIFAR-10 records (truncated, or not CIFAR-10's binary version?)"),
    (lambda raw: {"data_batch_5.bin": b"\x0a" + raw["data_batch_5.bin"][1:]},
     ": cifar-10-batches-bin/data_batch_5.bin: labels go up to 10, expected 0..9"),
], ids=["missing", "missing-two", "link", "partial-record", "empty", "label"])
def test_corrupt_cifar10_archive_is_a_clear_error(tmp_path, change, message):
    raw, _ = write_cifar10(tmp_path / "source", "files")
    tar_gz(tmp_path / "cifar-10-binary.tar.gz", _archive_members(raw, **change(raw)))
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path / 'cifar-10-binary.tar.gz') + message)}$"):
        data.load("cifar10", str(tmp_path))


def test_duplicate_member_is_refused(tmp_path):
    raw, _ = write_cifar10(tmp_path / "source", "files")
    tar_gz(tmp_path / "cifar-10-binary.tar.gz",
           _archive_members(raw) + [("cifar-10-batches-bin/data_batch_1.bin", raw["data_batch_1.bin"])])
    with pytest.raises(UserError, match="data_batch_1.bin is in the archive twice"):
        data.load("cifar10", str(tmp_path))


@pytest.mark.parametrize("damage", ["truncated", "not gzip", "bit flip"])
def test_damaged_cifar10_archive_is_one_line(tmp_path, damage):
    write_cifar10(tmp_path)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    packed = archive.read_bytes()
    if damage == "truncated":
        packed = packed[:len(packed) // 2]
    elif damage == "not gzip":
        packed = b"<html>Not Found</html>"
    else:
        packed = packed[:1000] + bytes([packed[1000] ^ 0xFF]) + packed[1001:]
    archive.write_bytes(packed)
    with pytest.raises(UserError, match="cannot read the CIFAR-10 archive .*: truncated or corrupt") as error:
        data.load("cifar10", str(tmp_path))
    assert len(str(error.value).splitlines()) == 1


def test_cifar10_batch_over_the_cap(tmp_path, monkeypatch):
    for layout in ("archive", "files"):
        write_cifar10(tmp_path / layout, layout)
        monkeypatch.setattr(data, "CIFAR10_MAX_RECORDS", 40)  # a batch of exactly the most records is read
        assert data.load("cifar10", str(tmp_path / layout)).num_test == 40
        monkeypatch.setattr(data, "CIFAR10_MAX_RECORDS", 39)
        with pytest.raises(UserError, match="data_batch_1.bin holds 40 records, more than the 39 of a CIFAR-10 "
                                            "batch$"):
            data.load("cifar10", str(tmp_path / layout))


def test_what_follows_the_tar_is_read_in_pieces_up_to_the_cap(tmp_path, monkeypatch):
    """A member may end at the cap, and the whole stream may reach it; past the tar's end the gzip stream is
    read a piece at a time and refused once it passes the cap: 32 MiB of zeros there are never held at once."""
    raw, _ = write_cifar10(tmp_path / "source", "files")
    tar_gz(tmp_path / "plain.tar.gz", _archive_members(raw))
    with gzip.open(tmp_path / "plain.tar.gz") as f:
        tar = f.read()
    with tarfile.open(tmp_path / "plain.tar.gz") as members:
        last_end = max(member.offset_data + member.size for member in members)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    archive.write_bytes(gzip.compress(tar))
    monkeypatch.setattr(data, "CIFAR10_MAX_TAR_BYTES", last_end)
    assert data.load("cifar10", str(tmp_path)).num_train == 200
    archive.write_bytes(gzip.compress(tar + bytes(1 << 20)))
    monkeypatch.setattr(data, "CIFAR10_MAX_TAR_BYTES", len(tar) + (1 << 20))
    assert data.load("cifar10", str(tmp_path)).num_train == 200
    archive.write_bytes(gzip.compress(tar + bytes(32 << 20)))
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=f"^{re.escape(str(archive))} unpacks to more than {len(tar) + (1 << 20)} "
                                            "bytes; CIFAR-10's archive unpacks to 184 MB$"):
            data.load("cifar10", str(tmp_path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_a_batch_file_that_cannot_be_read_or_changes_is_one_line(tmp_path, monkeypatch):
    write_cifar10(tmp_path, "files")
    path = str(tmp_path / "data_batch_1.bin")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as patch:
        patch.setattr(data, "open", denied, raising=False)  # a root user reads every file: refuse it here
        with pytest.raises(UserError, match=f"^cannot read {re.escape(path)} \\(Permission denied\\)$"):
            data.load("cifar10", str(tmp_path))
    stat = os.fstat

    def smaller(fd):  # the size seen before reading: one record less than is then read
        found = stat(fd)
        return os.stat_result((*found[:6], found.st_size - 3073, *found[7:]))

    monkeypatch.setattr(os, "fstat", smaller)
    with pytest.raises(UserError, match=f"^{re.escape(path)} changed size while it was read$"):
        data.load("cifar10", str(tmp_path))


def _gzip_of_header(info: tarfile.TarInfo, body: bytes) -> bytes:
    """A tar stream whose member ``info`` announces its size but is followed only by ``body``, gzipped."""
    return gzip.compress(info.tobuf(tarfile.GNU_FORMAT) + body)


@pytest.mark.parametrize("name, size, message", [
    ("cifar-10-batches-bin/data_batch_1.bin", 3073 * 10_001, "holds 10001 records, more than the 10000"),
    ("cifar-10-batches-bin/readme.html", 300 << 20, "unpacks to more than 268435456 bytes"),
], ids=["batch", "other member"])
def test_huge_member_is_refused_before_its_body(tmp_path, name, size, message):
    info = tarfile.TarInfo(name)
    info.size = size
    body = np.random.default_rng(0).integers(0, 256, 1 << 20, np.uint8).tobytes()
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(_gzip_of_header(info, body))
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=message):
            data.load("cifar10", str(tmp_path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_cifar10_folder_problems(tmp_path):
    with pytest.raises(UserError, match="does not exist or is not a folder"):
        data.load("cifar10", str(tmp_path / "nope"))
    batches = "data_batch_1.bin, data_batch_2.bin, data_batch_3.bin, data_batch_4.bin, data_batch_5.bin"
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path))} has no cifar-10-binary.tar.gz, "
                                        f"cifar-10-batches-bin/ or {batches}, test_batch.bin \\(expected CIFAR-10's "
                                        "binary version\\)$"):
        data.load("cifar10", str(tmp_path))
    write_cifar10(tmp_path, "unpacked")
    (tmp_path / "cifar-10-batches-bin" / "data_batch_4.bin").unlink()
    with pytest.raises(UserError, match=f"data_batch_4.bin is missing \\(CIFAR-10's binary version has {batches} "
                                        "and test_batch.bin\\)$"):
        data.load("cifar10", str(tmp_path))


# --- npz:PATH, the keras.datasets layout ---

FASHION_NPZ = os.path.join(PROJECT_ROOT, "tests", "data", "fashion-mnist-small.npz")
# The arrays' sha256, as tests/data/cut_fashion_mnist_npz.py's docstring gives them.
FASHION_NPZ_SHA256 = {
    "x_train": "7350186bf86b76af65f1c8f921436fd67c69c61ba7dd0f51a5047991359cd2d9",
    "y_train": "a2d1512599a9270ae0b22c236d1bb6c9faf54db68c3cb38be103496028e48209",
    "x_test": "00cc52584679205ab764cf9e1e98915407f8bb5a0ab0bd054345f1805679a298",
    "y_test": "86ad59396c444dad595925f6a22f96a7b7a9bbe0fcaf605eaf73dddbe7daba59",
}


def test_real_fashion_mnist_npz(monkeypatch):
    """A cut of real Fashion-MNIST in keras' layout ([N, 28, 28] and uint8 labels), by absolute and relative path."""
    assert os.path.getsize(FASHION_NPZ) < 1 << 20
    dataset = data.load("npz:" + FASHION_NPZ)
    monkeypatch.chdir(PROJECT_ROOT)
    relative = data.load("npz:tests/data/fashion-mnist-small.npz", train_limit=100)
    assert dataset.train["x"].shape == (1000, 28, 28, 1) and dataset.test["x"].shape == (500, 28, 28, 1)
    assert dataset.train["x"].dtype == np.uint8 and dataset.test["y"].dtype == np.int32
    assert dataset.train["y"].shape == (1000,) and dataset.test["y"].shape == (500,)
    assert data.classes("npz:" + FASHION_NPZ, dataset) == 10
    assert dataset.train["y"][:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # ankle boot, T-shirt, ...
    assert dataset.test["y"][:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    arrays = {"x_train": dataset.train["x"][..., 0], "y_train": dataset.train["y"].astype(np.uint8),
              "x_test": dataset.test["x"][..., 0], "y_test": dataset.test["y"].astype(np.uint8)}
    assert {key: hashlib.sha256(array.tobytes()).hexdigest() for key, array in arrays.items()} == FASHION_NPZ_SHA256
    np.testing.assert_array_equal(relative.train["x"], dataset.train["x"][:100])


def _arrays(train=12, test=5, shape=(8, 6, 3), labels_dtype=np.int64):
    rng = np.random.default_rng(0)
    return {"x_train": rng.integers(0, 256, (train, *shape), np.uint8),
            "y_train": rng.integers(0, 7, train).astype(labels_dtype),
            "x_test": rng.integers(0, 256, (test, *shape), np.uint8),
            "y_test": np.arange(test).astype(labels_dtype)}


def test_npz_any_image_shape_and_label_layout(tmp_path):
    arrays = _arrays()
    arrays["y_train"] = arrays["y_train"][:, None].astype(np.uint16)  # [N, 1], as some exporters write it
    arrays["x_test"] = np.asfortranarray(arrays["x_test"])
    np.savez(tmp_path / "set.npz", **arrays)
    dataset = data.load(f"npz:{tmp_path / 'set.npz'}")
    np.testing.assert_array_equal(dataset.train["x"], arrays["x_train"])
    np.testing.assert_array_equal(dataset.test["x"], arrays["x_test"])
    assert dataset.train["y"].tolist() == arrays["y_train"][:, 0].tolist()
    assert dataset.train["y"].dtype == np.int32 and dataset.train["y"].shape == (12,)
    assert dataset.train["x"].shape[1:] == (8, 6, 3)
    assert data.classes("npz:set.npz", dataset) == max(arrays["y_train"].max(), 4) + 1  # test labels are 0..4
    assert dataset.test["x"].flags.c_contiguous


def test_npz_of_any_arrays(tmp_path):
    """Float features with float targets; integer tokens with a mask and no y: each kept by name,
    in JAX's dtypes, with no class count where there are no class labels."""
    rng = np.random.default_rng(0)
    features = {"x_train": rng.normal(size=(10, 7)), "y_train": rng.normal(size=10),
                "x_test": rng.normal(size=(4, 7)), "y_test": rng.normal(size=4)}
    np.savez(tmp_path / "features.npz", **features)
    dataset = data.load(f"npz:{tmp_path / 'features.npz'}")
    assert list(dataset.train) == ["x", "y"] and dataset.train["x"].dtype == np.float32
    np.testing.assert_array_equal(dataset.test["y"], features["y_test"].astype(np.float32))
    assert dataset.labels() is None and data.classes("npz:features.npz", dataset) is None
    tokens = {"x_train": rng.integers(0, 50, (9, 16)), "mask_train": rng.random((9, 16)) < 0.5,
              "x_test": rng.integers(0, 50, (3, 16)), "mask_test": np.ones((3, 16), bool)}
    np.savez(tmp_path / "tokens.npz", **tokens)
    dataset = data.load(f"npz:{tmp_path / 'tokens.npz'}", train_limit=5)
    assert list(dataset.train) == ["x", "mask"] and dataset.num_train == 5 and dataset.num_test == 3
    assert dataset.train["x"].dtype == np.int32 and dataset.train["mask"].dtype == np.bool_
    np.testing.assert_array_equal(dataset.train["x"], tokens["x_train"][:5])
    np.testing.assert_array_equal(dataset.test["mask"], tokens["mask_test"])
    assert data.classes("npz:tokens.npz", dataset) is None


class _Planted:
    """Unpickling this would create a folder: the reader must refuse the object array without unpickling it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _change(**arrays):
    return lambda base, tmp_path: {**base, **arrays}


def _drop(*keys):
    return lambda base, tmp_path: {key: value for key, value in base.items() if key not in keys}


def _rename(old, new):
    return lambda base, tmp_path: {(new if key == old else key): value for key, value in base.items()}


NAMES = ("its arrays must be named NAME_train and NAME_test (x_train, x_test, and optionally y_train, y_test and more), "
         "NAME an identifier other than index")
SAME = "both splits must hold the same per example"
LABELS = "class labels must be 0..65535 (store other targets as floats)"


@pytest.mark.parametrize("make, message", [
    (_drop("x_test", "y_test"), " has x_train but no x_test"),
    (_drop("x_train", "x_test"),
     " has no x_train and x_test (the inputs; keras.datasets' layout: x_train, y_train, x_test, y_test)"),
    (_rename("y_test", "labels"), f" holds 'labels.npy'; {NAMES}"),
    (_change(x_valid=np.zeros((3, 8, 6, 3), np.uint8)), f" holds 'x_valid.npy'; {NAMES}"),
    (_change(index_train=np.zeros(12), index_test=np.zeros(5)), f" holds 'index_train.npy'; {NAMES}"),
    (_change(mask_train=np.ones((12, 4), bool)), " has mask_train but no mask_test"),
    (lambda base, tmp_path: {**base, "y_train": base["y_train"][:-1]},
     ": the train split has 12 examples in x_train but 11 in y_train"),
    (_change(x_train=np.zeros((12, 8, 6, 3), np.complex64)),
     ": x_train has dtype complex64; arrays must be booleans, integers or floats"),
    (_change(x_test=np.zeros((5, 48), np.uint8)), f": x_train holds 8x6x3 of uint8, x_test 48 of uint8; {SAME}"),
    (_change(x_test=np.zeros((5, 8, 6, 1), np.uint8)), f": x_train holds 8x6x3 of uint8, x_test 8x6x1 of uint8; {SAME}"),
    (_change(x_test=np.zeros((5, 8, 6, 3), np.float32)),
     f": x_train holds 8x6x3 of uint8, x_test 8x6x3 of float32; {SAME}"),
    (_change(x_test=np.zeros((5, 8, 0, 3), np.uint8)),
     ": x_test has shape (5, 8, 0, 3); it needs a leading example axis and no empty axis after it"),
    (_change(x_test=np.zeros((5, 0), np.uint8)),
     ": x_test has shape (5, 0); it needs a leading example axis and no empty axis after it"),
    (_change(y_test=np.array([0, 1, -1, 2, 3])), f": y_test: labels out of range (-1..3); {LABELS}"),
    (_change(y_test=np.array([0, 1, 65536, 2, 3])), f": y_test: labels out of range (0..65536); {LABELS}"),
    (_change(y_train=np.zeros(12)), f": y_train holds scalars of float64, y_test scalars of int64; {SAME}"),
    (_change(y_train=np.zeros((12, 2), np.int64)), f": y_train holds 2 of int64, y_test scalars of int64; {SAME}"),
    (_change(x_train=np.full((12, 3), 2 ** 40), x_test=np.zeros((5, 3), np.int64)),
     ": x_train holds int64 values outside int32, which JAX computes with (1099511627776..1099511627776)"),
    (_change(x_train=np.full((12, 3), -2 ** 31 - 1), x_test=np.zeros((5, 3), np.int64)),
     ": x_train holds int64 values outside int32, which JAX computes with (-2147483649..-2147483649)"),
    (_change(x_test=np.zeros((0, 8, 6, 3), np.uint8), y_test=np.zeros(0, np.int64)), ": the test split is empty"),
    (lambda base, tmp_path: {**base, "y_train": np.array([_Planted(str(tmp_path / "planted"))] * 12, object)},
     ": y_train holds Python objects (dtype object); only plain arrays are read, never pickles"),
], ids=["split", "no-x", "name", "other-split", "index", "one-split", "lengths", "complex", "ndim", "shapes", "dtypes",
        "empty-axis", "empty-second-axis", "negative", "large", "mixed-labels", "label-shape", "int64", "int64-low",
        "empty", "object"])
def test_bad_npz_is_one_clear_line(tmp_path, make, message):
    np.savez(tmp_path / "set.npz", **make(_arrays(), tmp_path))
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path / 'set.npz') + message)}$"):
        data.load(f"npz:{tmp_path / 'set.npz'}")
    assert not (tmp_path / "planted").exists()


def test_npz_members_are_npy_files_named_by_their_last_underscore(tmp_path):
    """``token_mask_train`` is the array ``token_mask``; a member that is not an .npy file is refused."""
    arrays = {**_arrays(), "token_mask_train": np.ones((12, 2), bool), "token_mask_test": np.zeros((5, 2), bool)}
    np.savez(tmp_path / "set.npz", **arrays)
    assert list(data.load(f"npz:{tmp_path / 'set.npz'}").train) == ["x", "y", "token_mask"]
    with zipfile.ZipFile(tmp_path / "set.npz", "a") as archive:
        archive.writestr("notes_train", b"not an array")
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path / 'set.npz'))} holds 'notes_train'; "
                                        f"{re.escape(NAMES)}$"):
        data.load(f"npz:{tmp_path / 'set.npz'}")


def test_npz_values_at_their_bounds_are_read(tmp_path, monkeypatch):
    """The largest class label, int64 values at int32's ends, and exactly the most examples and bytes are read;
    one example or byte more is refused."""
    arrays = _arrays()
    arrays["y_train"][0] = 65535
    arrays["x_test"] = np.zeros((5, 8, 6, 3), np.int64)
    arrays["x_train"] = np.zeros((12, 8, 6, 3), np.int64)
    arrays["x_train"][0, 0, 0] = [-2 ** 31, 2 ** 31 - 1, 0]
    np.savez(tmp_path / "set.npz", **arrays)
    path = f"npz:{tmp_path / 'set.npz'}"
    monkeypatch.setattr(data, "MAX_EXAMPLES", 12)
    monkeypatch.setattr(data, "NPZ_MAX_BYTES", sum(array.nbytes for array in arrays.values()))
    dataset = data.load(path)
    assert dataset.train["y"][0] == 65535 and dataset.train["x"].dtype == np.int32
    assert dataset.train["x"][0, 0, 0].tolist() == [-2 ** 31, 2 ** 31 - 1, 0]
    monkeypatch.setattr(data, "NPZ_MAX_BYTES", data.NPZ_MAX_BYTES - 1)
    with pytest.raises(UserError, match=f"its arrays hold {data.NPZ_MAX_BYTES + 1} bytes, more than the "
                                        f"{data.NPZ_MAX_BYTES} \\(2 GiB\\) this reader accepts$"):
        data.load(path)
    monkeypatch.setattr(data, "MAX_EXAMPLES", 11)
    with pytest.raises(UserError, match="the train split has 12 examples, more than the 11 this reader accepts$"):
        data.load(path)


def test_npz_that_is_not_one(tmp_path):
    with pytest.raises(UserError, match="does not exist or is not a file"):
        data.load(f"npz:{tmp_path / 'nope.npz'}")
    (tmp_path / "text.npz").write_text("hello")
    np.save(tmp_path / "array.npy", np.zeros(3, np.uint8))
    for name in ("text.npz", "array.npy"):
        with pytest.raises(UserError, match=f"{name} is not an .npz file \\(not a zip archive\\)"):
            data.load(f"npz:{tmp_path / name}")
    np.savez(tmp_path / "set.npz", **_arrays())
    packed = (tmp_path / "set.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(packed[:len(packed) // 2])
    with pytest.raises(UserError, match="cut.npz as an .npz file \\(BadZipFile"):
        data.load(f"npz:{tmp_path / 'cut.npz'}")
    start = packed.index(b"x_train.npy") + 200  # a byte of x_train's body: its CRC fails when read
    (tmp_path / "flipped.npz").write_bytes(packed[:start] + bytes([packed[start] ^ 1]) + packed[start + 1:])
    with pytest.raises(UserError, match="cannot read .*flipped.npz as an .npz file \\(BadZipFile: Bad CRC-32"):
        data.load(f"npz:{tmp_path / 'flipped.npz'}")


def _npz_of_headers(path, shapes: dict) -> None:
    """An .npz whose members are .npy headers announcing ``shapes`` (uint8 images, int64 labels), then 1 MiB."""
    body = np.random.default_rng(0).integers(0, 256, 1 << 20, np.uint8).tobytes()
    with zipfile.ZipFile(path, "w") as archive:
        for key, shape in shapes.items():
            header = io.BytesIO()
            dtype = np.uint8 if key.startswith("x") else np.int64
            np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                          "fortran_order": False, "shape": shape})
            archive.writestr(key + ".npy", header.getvalue() + body)


@pytest.mark.parametrize("train, message", [
    (1_000_001, "the train split has 1000001 examples, more than the 1000000"),
    (400_000, "its arrays hold 5041360000 bytes, more than the 2147483648 \\(2 GiB\\)"),
])
def test_huge_npz_header_is_refused_before_the_body(tmp_path, train, message):
    _npz_of_headers(tmp_path / "huge.npz", {"x_train": (train, 64, 64, 3), "y_train": (train,),
                                            "x_test": (10_000, 64, 64, 3), "y_test": (10_000,)})
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=message):
            data.load(f"npz:{tmp_path / 'huge.npz'}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
