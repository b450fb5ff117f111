"""Input pipeline: image classification sets, loaded once, then kept on the device.

Sources:
  * ``mnist``, ``fashion_mnist``: the raw IDX files, downloaded once into a
    cache and verified (``download.py``), or read from ``--data-dir`` with no
    network; no TensorFlow needed,
  * ``cifar10``: CIFAR-10's binary version, downloaded and verified the same
    way, or read from ``--data-dir`` (the archive or its six batch files),
  * ``npz:PATH``: a NumPy ``.npz`` in the layout of ``keras.datasets``
    (``x_train``, ``y_train``, ``x_test``, ``y_test``), any image size,
  * ``tfds:mnist``, ``tfds:fashion_mnist``: tensorflow-datasets' ``data_source``
    (preparing the set the first time needs TensorFlow installed),
  * ``synthetic``: a small generated set for smoke runs.

Every file is read as input from someone else: sizes are checked against
caps before any body is read, a file is never unpickled, an archive is never
extracted to disk. Batches are never built on the host: the training step
gathers its examples from the device-resident arrays by index (see ``step.py``).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import tarfile
import zipfile
import zlib
from typing import BinaryIO, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxseed import download, npyfile, streams
from jaxseed.config import DATASETS, npz_path
from jaxseed.errors import UserError, one_line

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UBYTE = 0x08
# MNIST has 60,000 training examples; the cap bounds what a header can make the reader allocate.
MAX_EXAMPLES = 1_000_000
_READ_CHUNK = 1 << 20  # gzip reads through a temporary buffer of this size
NUM_CLASSES = 10  # of MNIST, Fashion-MNIST, CIFAR-10 and the synthetic set
# Data sets whose classes are fixed: their readers refuse another label, and a model's head has
# NUM_CLASSES outputs whatever labels reach it (one corrupted label does not grow the head).
FIXED_CLASSES = ("mnist", "fashion_mnist", "cifar10", "synthetic")
_TFDS_PREFIX = "tfds:"

# CIFAR-10's binary version: five training batches (in this order) and one test batch, in the
# archive under CIFAR10_FOLDER. A record is a label byte, then the red, green and blue planes of
# the image, each 32x32 row-major.
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = "test_batch.bin"
_CIFAR10_BATCHES = (*CIFAR10_TRAIN, CIFAR10_TEST)
CIFAR10_FOLDER = "cifar-10-batches-bin"
_CIFAR10_RECORD = 1 + 3 * 32 * 32
CIFAR10_MAX_RECORDS = 10_000  # per batch, as in the real set: bounds what one batch can make us allocate
# The real archive unpacks to 184 MB: a member that would end past this is refused before it is read,
# so a crafted archive cannot keep the reader decompressing.
CIFAR10_MAX_TAR_BYTES = 256 << 20

# npz:PATH (the keras.datasets layout). Caps checked on the .npy headers, before any array is read:
# at most MAX_EXAMPLES per split, and NPZ_MAX_IMAGE_BYTES of images over both splits (CIFAR-10's
# 60,000x32x32x3 hold 184 MB); labels 0..MAX_LABEL, which bounds the classes a model's head gets.
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_MAX_IMAGE_BYTES = 2 << 30
MAX_LABEL = 65535
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # what np.load takes for a zip (an .npz), as it checks


class Dataset(NamedTuple):
    """Images uint8[N, H, W, C], labels int32[N], host or device arrays.

    Only these four arrays are fields: the data hash of a run is computed over them.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def num_train(self) -> int:
        return int(self.train_images.shape[0])

    @property
    def num_classes(self) -> int:
        """The largest label over both splits, plus one."""
        return max(int(self.train_labels.max()), int(self.test_labels.max())) + 1

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(int(size) for size in self.train_images.shape[1:])


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


def load_cifar10(data_dir: str) -> Dataset:
    """CIFAR-10's binary version from ``data_dir``: its six batch files, or the archive that holds them.

    Looked for in this order: the six ``.bin`` files in ``data_dir``, in the
    ``cifar-10-batches-bin/`` folder that unpacking the archive leaves there,
    then ``cifar-10-binary.tar.gz`` itself (what the download caches), read in
    memory. Images come out HWC, as every other source's.
    """
    if not os.path.isdir(data_dir):
        raise UserError(f"data dir {data_dir} does not exist or is not a folder")
    for folder in (data_dir, os.path.join(data_dir, CIFAR10_FOLDER)):
        if any(os.path.lexists(os.path.join(folder, name)) for name in _CIFAR10_BATCHES):
            batches = {name: _read_cifar10_file(os.path.join(folder, name)) for name in _CIFAR10_BATCHES}
            break
    else:
        archive = os.path.join(data_dir, download.CIFAR10_FILE.name)
        if not os.path.isfile(archive):
            raise UserError(f"{data_dir} has no {download.CIFAR10_FILE.name}, {CIFAR10_FOLDER}/ or "
                            f"{', '.join(_CIFAR10_BATCHES)} (expected CIFAR-10's binary version)")
        batches = _read_cifar10_archive(archive)
    records = [_cifar10_records(*batches[name]) for name in _CIFAR10_BATCHES]
    return Dataset(*_cifar10_arrays(np.concatenate(records[:-1])), *_cifar10_arrays(records[-1]))


def _check_cifar10_size(where: str, size: int) -> None:
    """Refuse a batch of ``size`` bytes unless it is 1..CIFAR10_MAX_RECORDS whole records, before reading it."""
    if size == 0 or size % _CIFAR10_RECORD:
        raise UserError(f"{where} holds {size} bytes, not a whole number of {_CIFAR10_RECORD}-byte CIFAR-10 "
                        "records (truncated, or not CIFAR-10's binary version?)")
    if size // _CIFAR10_RECORD > CIFAR10_MAX_RECORDS:
        raise UserError(f"{where} holds {size // _CIFAR10_RECORD} records, more than the {CIFAR10_MAX_RECORDS} "
                        "of a CIFAR-10 batch")


def _read_cifar10_file(path: str) -> tuple[str, bytes]:
    """``path`` and its bytes, read once its size is checked."""
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing (CIFAR-10's binary version has {', '.join(CIFAR10_TRAIN)} and "
                        f"{CIFAR10_TEST})")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            _check_cifar10_size(path, size)
            raw = f.read(size + 1)
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror or error})") from None
    if len(raw) != size:
        raise UserError(f"{path} changed size while it was read")
    return path, raw


def _read_cifar10_archive(path: str) -> dict[str, tuple[str, bytes]]:
    """Where each of the six batches is (for messages) and its bytes, from the archive ``path``.

    Members are taken by exact name, in one pass, in memory: nothing is written
    to disk. Only regular members are read (a link is refused, never
    followed), each after its size is checked.
    """
    wanted = {f"{CIFAR10_FOLDER}/{name}": name for name in _CIFAR10_BATCHES}
    found = {}
    try:
        # gzip.open, not tarfile's "r|gz": it checks the CRC and length at the end (read to there below).
        with gzip.open(path, "rb") as unpacked:
            with tarfile.open(fileobj=unpacked, mode="r|") as tar:  # a stream: one pass, no seek
                for member in tar:
                    if member.offset_data + member.size > CIFAR10_MAX_TAR_BYTES:
                        raise UserError(f"{path} unpacks to more than {CIFAR10_MAX_TAR_BYTES} bytes "
                                        f"({member.name} ends past them); CIFAR-10's archive unpacks to 184 MB")
                    if member.name not in wanted:
                        continue
                    where = f"{path}: {member.name}"
                    if not member.isreg():
                        raise UserError(f"{where} is not a regular file (a link?)")
                    if wanted[member.name] in found:
                        raise UserError(f"{where} is in the archive twice")
                    _check_cifar10_size(where, member.size)
                    found[wanted[member.name]] = where, tar.extractfile(member).read()
            while unpacked.read(_READ_CHUNK):  # what follows the tar's end, up to the gzip trailer
                if unpacked.tell() > CIFAR10_MAX_TAR_BYTES:
                    raise UserError(f"{path} unpacks to more than {CIFAR10_MAX_TAR_BYTES} bytes; CIFAR-10's "
                                    "archive unpacks to 184 MB")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise UserError(f"cannot read the CIFAR-10 archive {path}: truncated or corrupt ({error})") from None
    missing = [member for member, name in wanted.items() if name not in found]
    if missing:
        raise UserError(f"{path} has no {', '.join(missing)} (expected CIFAR-10's binary version)")
    return found


def _cifar10_records(where: str, raw: bytes) -> np.ndarray:
    """One batch's records, uint8[N, 3073], once their labels are checked."""
    records = np.frombuffer(raw, np.uint8).reshape(-1, _CIFAR10_RECORD)
    if records[:, 0].max() >= NUM_CLASSES:
        raise UserError(f"{where}: labels go up to {records[:, 0].max()}, expected 0..{NUM_CLASSES - 1}")
    return records


def _cifar10_arrays(records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8[N, 32, 32, 3] (HWC, from the records' CHW) and labels int32[N]."""
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), records[:, 0].astype(np.int32)


def load_npz(path: str) -> Dataset:
    """A NumPy ``.npz`` in the layout of ``keras.datasets``: ``x_train``, ``y_train``, ``x_test``, ``y_test``.

    Images uint8 [N, H, W, C] or [N, H, W] (then C = 1), the same H, W, C in
    both splits; labels integers 0..MAX_LABEL, [N] or [N, 1]. Every array's
    .npy header is checked (dtype, shape, the caps above) before any array is
    read; nothing is unpickled (``allow_pickle=False``), so the file is data,
    never code. One open file serves the checks and the reads.
    """
    if not os.path.isfile(path):
        raise UserError(f"npz file {path} does not exist or is not a file")
    try:
        with open(path, "rb") as f:
            if f.read(4) not in _ZIP_MAGIC:
                raise UserError(f"{path} is not an .npz file (not a zip archive)")
            f.seek(0)
            with np.load(f, allow_pickle=False) as npz:
                headers = _npz_headers(path, npz.zip)
                _check_npz_headers(path, headers)
                arrays = {key: npz[key + ".npy"] for key in NPZ_KEYS}  # the exact member: never a raw one
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, ValueError, OSError,
            EOFError, zlib.error) as error:  # a damaged zip or array; an encrypted or exotic member
        raise UserError(f"cannot read {path} as an .npz file ({one_line(error, with_type=True)})") from None
    split = []
    for images_key, labels_key in (("x_train", "y_train"), ("x_test", "y_test")):
        images = arrays[images_key]
        split += [np.ascontiguousarray(images if images.ndim == 4 else images[..., None]),
                  _npz_labels(path, labels_key, arrays[labels_key])]
    return Dataset(*split)


def _npz_headers(path: str, archive: zipfile.ZipFile) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each of NPZ_KEYS, read from its .npy header alone."""
    try:
        return npyfile.npz_headers(archive, NPZ_KEYS)
    except KeyError as missing:
        raise UserError(f"{path} has no {missing.args[0]} (expected the keras.datasets layout: "
                        f"{', '.join(NPZ_KEYS)})") from None
    except ValueError as error:
        raise UserError(f"{path}: {error}") from None


def _image_dims(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[1:] if len(shape) == 4 else shape[1:] + (1,)


def _check_npz_headers(path: str, headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """Refuse what the arrays cannot be, from their headers, so that nothing unwanted is ever read."""
    image_bytes = 0
    for split in ("train", "test"):
        (images, images_dtype), (labels, labels_dtype) = headers[f"x_{split}"], headers[f"y_{split}"]
        if images_dtype != np.uint8:
            raise UserError(f"{path}: x_{split} has dtype {images_dtype}; images must be uint8 (0..255): convert "
                            "them, e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1]")
        if len(images) not in (3, 4) or 0 in images[1:]:
            raise UserError(f"{path}: x_{split} has shape {images}; images must be [N, H, W, C] or [N, H, W]")
        if labels_dtype.kind not in "iu":
            raise UserError(f"{path}: y_{split} has dtype {labels_dtype}; labels must be integers "
                            f"(class indices 0..{MAX_LABEL})")
        if labels[1:] not in ((), (1,)):
            raise UserError(f"{path}: y_{split} has shape {labels}; labels must be [N] or [N, 1]")
        if images[0] != labels[0]:
            raise UserError(f"{path}: the {split} split has {images[0]} images but {labels[0]} labels")
        if images[0] == 0:
            raise UserError(f"{path}: the {split} split is empty")
        if images[0] > MAX_EXAMPLES:
            raise UserError(f"{path}: the {split} split has {images[0]} examples, more than the {MAX_EXAMPLES} "
                            "this reader accepts")
        image_bytes += math.prod(images)
    train, test = (_image_dims(headers[key][0]) for key in ("x_train", "x_test"))
    if train != test:
        raise UserError(f"{path}: training images are {_dims(train)}, test images {_dims(test)}; "
                        "both splits must have one shape")
    if image_bytes > NPZ_MAX_IMAGE_BYTES:
        raise UserError(f"{path}: its images hold {image_bytes} bytes, more than the {NPZ_MAX_IMAGE_BYTES} "
                        "(2 GiB) this reader accepts")


def _npz_labels(path: str, key: str, labels: np.ndarray) -> np.ndarray:
    labels = labels.reshape(-1)
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > MAX_LABEL:
        raise UserError(f"{path}: {key}: labels out of range ({low}..{high}); they must be class indices "
                        f"0..{MAX_LABEL}")
    return labels.astype(np.int32)


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
        raise UserError(
            f"could not load {name!r} through tensorflow-datasets ({one_line(error, with_type=True)}); "
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


def classes(name: str, dataset: Dataset) -> int:
    """The classes a model for data set ``name`` predicts: fixed for the built-in sets
    (``FIXED_CLASSES``), else the largest label plus one."""
    return NUM_CLASSES if name in FIXED_CLASSES else dataset.num_classes


def load(name: str, data_dir: str | None = None, train_limit: int | None = None) -> Dataset:
    """Load data set ``name`` (one of DATASETS) on the host; keep the first ``train_limit`` training examples.

    With ``data_dir``, MNIST, Fashion-MNIST or CIFAR-10 is read from that
    folder; without, from the download cache, filled on first use. ``npz:PATH``
    reads the file PATH, relative to the working directory unless absolute.
    """
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir and name not in download.SOURCES:
        raise UserError(f"--data-dir reads the files of {', '.join(download.SOURCES)}; "
                        f"it does not combine with --data {name}")
    if name == "synthetic":
        dataset = synthetic()
    elif name.startswith(_TFDS_PREFIX):
        dataset = load_tfds(name.removeprefix(_TFDS_PREFIX))
    elif npz_path(name):
        dataset = load_npz(npz_path(name))
    elif name == "cifar10":
        dataset = load_cifar10(data_dir or download.fetch(name))
    else:
        dataset = load_idx_dir(data_dir or download.fetch(name))
    if train_limit is not None:
        if not 0 < train_limit <= dataset.num_train:
            raise UserError(f"--train-limit must be in [1, {dataset.num_train}], got {train_limit}")
        dataset = dataset._replace(
            train_images=dataset.train_images[:train_limit], train_labels=dataset.train_labels[:train_limit]
        )
    return dataset
