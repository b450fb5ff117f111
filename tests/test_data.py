"""Data sources: raw IDX files (a real MNIST slice and corrupted copies), TFDS offline, synthetic."""

import gzip
import os
import re
import shutil
import tracemalloc

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import MNIST_SLICE_DIR
from jaxseed import data, loop, streams
from jaxseed.config import Config
from jaxseed.errors import UserError


@pytest.fixture(scope="module")
def mnist():
    return data.load_idx_dir(MNIST_SLICE_DIR)


def test_real_mnist_idx(mnist):
    assert mnist.train_images.shape == (2000, 28, 28, 1) and mnist.train_images.dtype == np.uint8
    assert mnist.test_images.shape == (500, 28, 28, 1) and mnist.test_images.dtype == np.uint8
    assert mnist.train_labels.shape == (2000,) and mnist.train_labels.dtype == np.int32
    assert mnist.train_labels[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first labels
    assert mnist.test_labels[:5].tolist() == [7, 2, 1, 0, 4]
    for labels in (mnist.train_labels, mnist.test_labels):
        assert set(np.unique(labels)) == set(range(10))
    assert 30 < mnist.train_images.mean() < 40


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
    ("train-images-idx3-ubyte", lambda raw: b"\x00\x00\x09\x03" + raw[4:], "bad magic"),
    ("t10k-labels-idx1-ubyte", lambda raw: b"\x00\x00\x08\x03" + raw[4:], "bad magic"),
    ("train-images-idx3-ubyte", lambda raw: raw[:-100], "truncated"),
    ("train-labels-idx1-ubyte", lambda raw: raw[:6], "header is incomplete"),
    ("t10k-images-idx3-ubyte", lambda raw: raw + b"\x00", "longer than its header says"),
    ("t10k-labels-idx1-ubyte",
     lambda raw: raw[:4] + (499).to_bytes(4, "big") + raw[8:-1], "500 images but 499 labels"),
    ("t10k-images-idx3-ubyte", lambda raw: raw[:12] + (27).to_bytes(4, "big") + raw[16:],
     "t10k-images-idx3-ubyte: each example is 28x27, expected 28x28"),
    ("train-labels-idx1-ubyte", lambda raw: raw[:8] + b"\x0c" + raw[9:],
     "train-labels-idx1-ubyte: labels go up to 12, expected 0..9"),
    ("train-labels-idx1-ubyte", lambda raw: raw[:4] + b"\xff" * 4 + raw[8:], "claims 4294967295 examples"),
])
def test_corrupt_idx_is_a_clear_error(mnist_copy, target, transform, message):
    _rewrite(mnist_copy / target, transform)
    with pytest.raises(UserError, match=message):
        data.load_idx_dir(str(mnist_copy))


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
    assert dataset.num_train == 100 and dataset.test_images.shape[0] == 500
    with pytest.raises(UserError, match=r"--train-limit must be in \[1, 2000\]"):
        data.load("mnist", str(mnist_copy), train_limit=2001)


def test_unknown_name_and_data_dir_combinations(mnist_copy):
    with pytest.raises(UserError, match="unknown data set 'emnist'; choose one of mnist, fashion_mnist"):
        data.load("emnist")
    for name in ("synthetic", "tfds:mnist"):
        with pytest.raises(UserError, match=f"does not combine with --data {name}"):
            data.load(name, str(mnist_copy))


def test_tfds_data_source_offline():
    with tfds.testing.mock_data(num_examples=24):
        dataset = data.load("tfds:mnist")
    assert dataset.train_images.shape == (24, 28, 28, 1) and dataset.train_images.dtype == np.uint8
    assert dataset.test_labels.shape == (24,) and dataset.test_labels.dtype == np.int32


def test_tfds_failure_points_to_the_download_and_data_dir(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Failed to establish a new connection\nmore detail")

    monkeypatch.setattr(tfds, "data_source", offline)
    with pytest.raises(UserError, match="could not load 'fashion_mnist'.*ConnectionError.*"
                                        "--data fashion_mnist downloads.*--data-dir"):
        data.load("tfds:fashion_mnist")


def test_synthetic_is_fixed_and_learnable_shape():
    a, b = data.synthetic(), data.synthetic()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a.train_images.shape == (2048, 28, 28, 1) and a.test_labels.shape == (512,)
