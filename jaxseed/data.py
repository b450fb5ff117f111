"""Input pipeline: data sets of named arrays, loaded once, then kept on the device.

Sources:
  * ``mnist``, ``fashion_mnist``: the raw IDX files, downloaded once into a
    cache and verified (``download.py``), or read from ``--data-dir`` with no
    network; no TensorFlow needed,
  * ``cifar10``: CIFAR-10's binary version, downloaded and verified the same
    way, or read from ``--data-dir`` (the archive or its six batch files),
  * ``npz:PATH``: a NumPy ``.npz`` of any arrays ``NAME_train``, ``NAME_test``
    (``keras.datasets``' ``x_train``, ``y_train``, ``x_test``, ``y_test`` is one case):
    images, float features, integer tokens, masks,
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

# npz:PATH: arrays NAME_train and NAME_test (keras.datasets' layout for x and y). Caps checked on the
# .npy headers, before any array is read: at most MAX_EXAMPLES per split, and NPZ_MAX_BYTES over every
# array (CIFAR-10's 60,000x32x32x3 images hold 184 MB); class labels 0..MAX_LABEL, which bounds the
# classes a model's head gets.
NPZ_SPLITS = ("train", "test")
NPZ_MAX_BYTES = 2 << 30
MAX_LABEL = 65535
_NUMERIC = "biuf"  # numpy's dtype kinds of booleans, integers and floats
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # what np.load takes for a zip (an .npz), as it checks


class Dataset(NamedTuple):
    """Each split's named arrays, host or device arrays, all with a leading example axis.

    ``x``, the inputs (images uint8[N, H, W, C], float features, integer tokens, ...), always;
    ``y``, the targets (integer class labels int32[N], or any array), when the data has them;
    further arrays (masks, lengths) by their names. A batch holds the same names
    (``objective.Batch``). The data hash of a run is computed over ``arrays()``.
    """

    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]

    @property
    def num_train(self) -> int:
        return int(self.train["x"].shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test["x"].shape[0])

    def arrays(self) -> list[np.ndarray]:
        """Every array, the training split's then the test split's, each in its order (x, y, the rest)."""
        return [*self.train.values(), *self.test.values()]

    def labels(self) -> np.ndarray | None:
        """The test split's class labels int[N]: its ``y`` if that is one integer per example, else None."""
        y = self.test.get("y")
        return y if y is not None and y.ndim == 1 and y.dtype.kind in "iu" else None


def labelled(train_images, train_labels, test_images, test_labels) -> Dataset:
    """A data set of images ``x`` and their labels ``y``, as every built-in source has."""
    return Dataset({"x": train_images, "y": train_labels}, {"x": test_images, "y": test_labels})


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
    return labelled(*arrays)


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
    return labelled(*_cifar10_arrays(np.concatenate(records[:-1])), *_cifar10_arrays(records[-1]))


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
    """A NumPy ``.npz`` of arrays ``NAME_train`` and ``NAME_test``: ``x`` always, ``y`` and others optional.

    keras.datasets' layout (``x_train``, ``y_train``, ``x_test``, ``y_test``) is one case. Any
    numeric dtype and shape, the same per example in both splits, with one leading example
    axis per split: images uint8 [N, H, W, C] or [N, H, W] (then C = 1), float features,
    integer tokens, masks. An integer ``y`` of [N] or [N, 1] is class labels 0..MAX_LABEL,
    int32[N]; any other ``y`` is kept as it is. Arrays take JAX's dtypes (int64 -> int32,
    float64 -> float32), refused where a value would not fit. Every array's .npy header is
    checked (dtype, shape, the caps above) before any array is read; nothing is unpickled
    (``allow_pickle=False``), so the file is data, never code. One open file serves the
    checks and the reads.
    """
    if not os.path.isfile(path):
        raise UserError(f"npz file {path} does not exist or is not a file")
    try:
        with open(path, "rb") as f:
            if f.read(4) not in _ZIP_MAGIC:
                raise UserError(f"{path} is not an .npz file (not a zip archive)")
            f.seek(0)
            with np.load(f, allow_pickle=False) as npz:
                names = _npz_names(path, npz.zip.namelist())
                keys = tuple(f"{name}_{split}" for split in NPZ_SPLITS for name in names)
                headers = _npz_headers(path, npz.zip, keys)
                _check_npz_headers(path, names, headers)
                arrays = {key: npz[key + ".npy"] for key in keys}  # the exact member: never a raw one
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, ValueError, OSError,
            EOFError, zlib.error) as error:  # a damaged zip or array; an encrypted or exotic member
        raise UserError(f"cannot read {path} as an .npz file ({one_line(error, with_type=True)})") from None
    train, test = ({name: _npz_array(path, name, f"{name}_{split}", arrays[f"{name}_{split}"]) for name in names}
                   for split in NPZ_SPLITS)
    return Dataset(train, test)


def _npz_names(path: str, members: list[str]) -> tuple[str, ...]:
    """The names of the arrays in ``members``: x, y if there, then the others sorted; each in both splits."""
    names = {}
    for member in members:
        name, _, split = member.removesuffix(".npy").rpartition("_")
        if not member.endswith(".npy") or split not in NPZ_SPLITS or not name.isidentifier() or name == "index":
            raise UserError(f"{path} holds {member!r}; its arrays must be named NAME_train and NAME_test (x_train, "
                            "x_test, and optionally y_train, y_test and more), NAME an identifier other than index")
        names.setdefault(name, set()).add(split)
    if "x" not in names:
        raise UserError(f"{path} has no x_train and x_test (the inputs; keras.datasets' layout: x_train, y_train, "
                        "x_test, y_test)")
    for name, splits in names.items():
        if len(splits) < len(NPZ_SPLITS):
            missing = next(split for split in NPZ_SPLITS if split not in splits)
            raise UserError(f"{path} has {name}_{next(iter(splits))} but no {name}_{missing}")
    return ("x", *(["y"] if "y" in names else []), *sorted(set(names) - {"x", "y"}))


def _npz_headers(path: str, archive: zipfile.ZipFile, keys: tuple[str, ...]) -> dict:
    """Shape and dtype of each array of ``keys``, read from its .npy header alone."""
    try:
        return npyfile.npz_headers(archive, keys)
    except ValueError as error:
        raise UserError(f"{path}: {error}") from None


def _labels(name: str, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """Whether an array is class labels: an integer ``y`` of [N] or [N, 1]."""
    return name == "y" and dtype.kind in "iu" and shape[1:] in ((), (1,))


def _example_shape(name: str, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    """One example's shape as the data set holds it: C = 1 added to uint8 images x [N, H, W]."""
    if _labels(name, shape, dtype):
        return ()
    return shape[1:] + (1,) if name == "x" and dtype == np.uint8 and len(shape) == 3 else shape[1:]


def _check_npz_headers(path: str, names: tuple[str, ...], headers: dict) -> None:
    """Refuse what the arrays cannot be, from their headers, so that nothing unwanted is ever read."""
    total = 0
    for split in NPZ_SPLITS:
        count = headers[f"x_{split}"][0][:1]
        for name in names:
            key = f"{name}_{split}"
            shape, dtype = headers[key]
            if dtype.kind not in _NUMERIC:
                raise UserError(f"{path}: {key} has dtype {dtype}; arrays must be booleans, integers or floats")
            if not shape or 0 in shape[1:]:
                raise UserError(f"{path}: {key} has shape {shape}; it needs a leading example axis and no empty "
                                "axis after it")
            if shape[:1] != count:
                raise UserError(f"{path}: the {split} split has {count[0]} examples in x_{split} but {shape[0]} in "
                                f"{key}")
            total += math.prod(shape) * dtype.itemsize
        if count[0] == 0:
            raise UserError(f"{path}: the {split} split is empty")
        if count[0] > MAX_EXAMPLES:
            raise UserError(f"{path}: the {split} split has {count[0]} examples, more than the {MAX_EXAMPLES} "
                            "this reader accepts")
    for name in names:
        (train, train_dtype), (test, test_dtype) = headers[f"{name}_train"], headers[f"{name}_test"]
        labels = _labels(name, train, train_dtype)
        if labels != _labels(name, test, test_dtype) or (
                _example_shape(name, train, train_dtype) != _example_shape(name, test, test_dtype)) or (
                not labels and jax.dtypes.canonicalize_dtype(train_dtype) != jax.dtypes.canonicalize_dtype(test_dtype)):
            raise UserError(f"{path}: {name}_train holds {_dims(train[1:]) or 'scalars'} of {train_dtype}, "
                            f"{name}_test {_dims(test[1:]) or 'scalars'} of {test_dtype}; both splits must hold "
                            "the same per example")
    if total > NPZ_MAX_BYTES:
        raise UserError(f"{path}: its arrays hold {total} bytes, more than the {NPZ_MAX_BYTES} (2 GiB) this reader "
                        "accepts")


def _npz_array(path: str, name: str, key: str, array: np.ndarray) -> np.ndarray:
    """``array`` as a data set holds it: labels int32[N], images with C, JAX's dtype; contiguous."""
    if _labels(name, array.shape, array.dtype):
        labels = array.reshape(-1)
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high > MAX_LABEL:
            raise UserError(f"{path}: {key}: labels out of range ({low}..{high}); class labels must be 0..{MAX_LABEL} "
                            "(store other targets as floats)")
        return labels.astype(np.int32)
    array = array.reshape(array.shape[:1] + _example_shape(name, array.shape, array.dtype))
    dtype = jax.dtypes.canonicalize_dtype(array.dtype)
    if dtype.kind in "iu" and array.dtype != dtype and array.size and (
            array.min() < np.iinfo(dtype).min or array.max() > np.iinfo(dtype).max):
        raise UserError(f"{path}: {key} holds {array.dtype} values outside {dtype}, which JAX computes with "
                        f"({array.min()}..{array.max()})")
    return np.ascontiguousarray(array, dtype)


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
    return labelled(*arrays)


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
    return labelled(images[:num_train], labels[:num_train], images[num_train:], labels[num_train:])


def classes(name: str, dataset: Dataset) -> int | None:
    """The classes a model for data set ``name`` predicts: fixed for the built-in sets
    (``FIXED_CLASSES``), else the largest class label of both splits plus one; None where
    the data has no class labels (an integer ``y`` of one label per example)."""
    if name in FIXED_CLASSES:
        return NUM_CLASSES
    if dataset.labels() is None:
        return None
    return max(int(dataset.train["y"].max()), int(dataset.test["y"].max())) + 1


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
        dataset = dataset._replace(train={name: array[:train_limit] for name, array in dataset.train.items()})
    return dataset
