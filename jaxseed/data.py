"""Input pipeline: MNIST-like data sets, loaded once, then kept on the device.

Sources:
  * ``mnist``, ``fashion_mnist``: the raw IDX files, downloaded once into a
    cache and verified (``download.py``), or read from ``--data-dir`` with no
    network; no TensorFlow needed,
  * ``tfds:mnist``, ``tfds:fashion_mnist``: tensorflow-datasets' ``data_source``
    (preparing the set the first time needs TensorFlow installed),
  * ``synthetic``: a small generated set for smoke runs.

Batches are never built on the host: the training step gathers its examples
from the device-resident arrays by index (see ``step.py``).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from typing import BinaryIO, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxseed import download, streams
from jaxseed.config import DATASETS
from jaxseed.errors import UserError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UBYTE = 0x08
# MNIST has 60,000 training examples; the cap bounds what a header can make the reader allocate.
MAX_EXAMPLES = 1_000_000
_READ_CHUNK = 1 << 20  # gzip reads through a temporary buffer of this size
NUM_CLASSES = 10
_TFDS_PREFIX = "tfds:"


class Dataset(NamedTuple):
    """Images uint8[N, 28, 28, 1], labels int32[N], host or device arrays."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def num_train(self) -> int:
        return int(self.train_images.shape[0])


def read_idx(path: str, item_shape: tuple[int, ...], max_examples: int = MAX_EXAMPLES) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) of unsigned bytes: at most ``max_examples`` items of ``item_shape``.

    Layout: two zero bytes, the type code 0x08, the number of dimensions d, then
    d big-endian uint32 sizes, then the data. The header is checked before the
    body is read, so a header claiming a huge shape costs nothing; then exactly
    the bytes it announces are read. Anything else raises UserError (one line).
    """
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            shape = _read_header(f, path, 1 + len(item_shape))
            _check_shape(path, shape, item_shape, max_examples)
            return _read_body(f, path, shape)
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise UserError(f"cannot read IDX file {path}: {error}") from None


def _read_header(f: BinaryIO, path: str, ndim: int) -> tuple[int, ...]:
    magic = f.read(4)
    if len(magic) < 4 or magic[:3] != bytes((0, 0, _IDX_UBYTE)) or magic[3] != ndim:
        raise UserError(f"{path} is not an IDX file of unsigned bytes with {ndim} dimension(s) (bad magic number)")
    sizes = f.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise UserError(f"{path} is truncated: its header is incomplete")
    return struct.unpack(f">{ndim}I", sizes)  # Python ints: their product cannot overflow


def _check_shape(path: str, shape: tuple[int, ...], item_shape: tuple[int, ...], max_examples: int) -> None:
    if shape[1:] != item_shape:
        raise UserError(f"{path}: each example is {_dims(shape[1:])}, expected {_dims(item_shape)}")
    if shape[0] > max_examples:
        raise UserError(f"{path}: its header claims {shape[0]} examples, more than the {max_examples} "
                        "this reader accepts")


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _read_body(f: BinaryIO, path: str, shape: tuple[int, ...]) -> np.ndarray:
    """The ``prod(shape)`` bytes after the header, which must end the file."""
    size = math.prod(shape)
    body = np.empty(size, np.uint8)  # pages are committed only as bytes arrive: a short file costs little
    view, filled = memoryview(body), 0
    while filled < size and (count := f.readinto(view[filled:filled + _READ_CHUNK])):
        filled += count
    if filled < size:
        raise UserError(f"{path} is truncated: header gives shape {shape} ({size} bytes), file has {filled}")
    if f.read(1):  # also makes gzip check its CRC and length trailer
        raise UserError(f"{path} is longer than its header says: header gives shape {shape} ({size} bytes), "
                        "more follow")
    return body.reshape(shape)


def _find_idx(data_dir: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    raise UserError(f"{data_dir} has no {stem} or {stem}.gz (expected the four raw MNIST IDX files)")


def load_idx_dir(data_dir: str) -> Dataset:
    """The four IDX files of MNIST or Fashion-MNIST from ``data_dir``."""
    if not os.path.isdir(data_dir):
        raise UserError(f"data dir {data_dir} does not exist or is not a folder")
    arrays = []
    for split, (images_stem, labels_stem) in IDX_FILES.items():
        images = read_idx(_find_idx(data_dir, images_stem), (28, 28))
        labels_path = _find_idx(data_dir, labels_stem)
        labels = read_idx(labels_path, ())
        if images.shape[0] != labels.shape[0]:
            raise UserError(
                f"{data_dir}: {split} split has {images.shape[0]} images but {labels.shape[0]} labels"
            )
        if labels.size and labels.max() >= NUM_CLASSES:
            raise UserError(f"{labels_path}: labels go up to {labels.max()}, expected 0..9")
        arrays += [images[..., None], labels.astype(np.int32)]
    return Dataset(*arrays)


def load_tfds(name: str) -> Dataset:
    """``name`` through tensorflow-datasets' random-access ``data_source``.

    Preparing a set the first time needs TensorFlow and the network (offline,
    tfds retries for minutes before it fails); reading a prepared one needs neither.
    """
    try:
        import tensorflow_datasets as tfds

        arrays = []
        for split in ("train", "test"):
            source = tfds.data_source(name, split=split)
            examples = [source[i] for i in range(len(source))]
            arrays.append(np.stack([example["image"] for example in examples]).astype(np.uint8))
            arrays.append(np.array([example["label"] for example in examples], np.int32))
    except Exception as error:  # any failure to fetch or prepare: offline, no TensorFlow, ...
        reason = (str(error).strip().splitlines() or [""])[0][:120]
        raise UserError(
            f"could not load {name!r} through tensorflow-datasets ({type(error).__name__}: {reason}); "
            f"--data {name} downloads the raw IDX files without TensorFlow, "
            "and --data-dir DIR reads them from a folder with no network"
        ) from None
    return Dataset(*arrays)


@streams.pinned_generator
def synthetic(num_train: int = 2048, num_test: int = 512) -> Dataset:
    """A small learnable set: one fixed 7x7 pattern per class, upscaled, plus noise.

    Drawn from a fixed key, so every run sees the same data whatever its seeds.
    """
    pattern_key, noise_key, label_key = (
        jax.random.fold_in(streams.synthetic_data_key(), i) for i in range(3)
    )
    patterns = jax.random.uniform(pattern_key, (NUM_CLASSES, 7, 7)).repeat(4, 1).repeat(4, 2)
    total = num_train + num_test
    labels = jax.random.randint(label_key, (total,), 0, NUM_CLASSES)
    noise = jax.random.normal(noise_key, (total, 28, 28)) * 0.3
    images = jnp.clip(patterns[labels] + noise, 0.0, 1.0) * 255
    images = np.asarray(images, np.uint8)[..., None]
    labels = np.asarray(labels, np.int32)
    return Dataset(images[:num_train], labels[:num_train], images[num_train:], labels[num_train:])


def load(name: str, data_dir: str | None = None, train_limit: int | None = None) -> Dataset:
    """Load data set ``name`` (one of DATASETS) on the host; keep the first ``train_limit`` training examples.

    With ``data_dir``, MNIST or Fashion-MNIST is read from that folder of IDX
    files; without, from the download cache, filled on first use.
    """
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir and name not in download.SOURCES:
        raise UserError(f"--data-dir reads IDX files; it does not combine with --data {name}")
    if name == "synthetic":
        dataset = synthetic()
    elif name.startswith(_TFDS_PREFIX):
        dataset = load_tfds(name.removeprefix(_TFDS_PREFIX))
    else:
        dataset = load_idx_dir(data_dir or download.fetch(name))
    if train_limit is not None:
        if not 0 < train_limit <= dataset.num_train:
            raise UserError(f"--train-limit must be in [1, {dataset.num_train}], got {train_limit}")
        dataset = dataset._replace(
            train_images=dataset.train_images[:train_limit], train_labels=dataset.train_labels[:train_limit]
        )
    return dataset
