"""Cut the MNIST slice the tests train and download from: tests/data/mnist-slice/.

    python tests/data/cut_mnist_slice.py MNIST_DIR

The source folder must hold the four full MNIST IDX files (plain or .gz); their
decompressed sha256 is checked first, so the slice is cut from real MNIST only.
The slice keeps the first 2000 training and the first 500 test examples, with
their headers rewritten to the new counts, gzipped at level 9 with mtime 0 and
no file name, so rerunning the command reproduces the files byte for byte.

Cut with the command above from verified full MNIST (the checksums in
jaxseed.download.MNIST_SHA256); sha256 of the four decompressed slice files:

    train-images-idx3-ubyte  729d340c0177402770b27c04f817dfb40ed8844459b35a9f11ae21067b05cf19
    train-labels-idx1-ubyte  90795ea2219655a7281c0d6756d0ae8a33bebac7ec84bac89bbdcc5e3baa9f8c
    t10k-images-idx3-ubyte   de0a55d8eb2a23fce4f596c5234b08b9c8ee685583a2b0e52f3a78eca48f9d89
    t10k-labels-idx1-ubyte   60e902e82445d902e245e1b039469f36936d63cb28e81527a7bbba247c240af3
"""

import argparse
import gzip
import hashlib
import os
import struct
import sys

from jaxseed.download import MNIST_SHA256  # the full files' checksums, as the download checks them

KEEP = {"train": 2000, "t10k": 500}
OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist-slice")


def read_verified(folder: str, stem: str, sha256: dict = MNIST_SHA256, data_set: str = "MNIST") -> bytes:
    """The decompressed bytes of ``stem`` from ``folder`` (plain or .gz); exits unless their
    sha256 is ``sha256[stem]``, that of the full file of ``data_set``."""
    path = os.path.join(folder, stem)
    with (open(path, "rb") if os.path.exists(path) else gzip.open(path + ".gz")) as f:
        raw = f.read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256[stem]:
        sys.exit(f"{path}[.gz]: sha256 {digest}, expected {sha256[stem]}: not the full {data_set} file")
    return raw


def first_examples(raw: bytes, count: int) -> bytes:
    """The IDX file holding only the first ``count`` examples of ``raw``."""
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    per_example = 1
    for size in shape[1:]:
        per_example *= size
    header = raw[:4] + struct.pack(f">{ndim}I", count, *shape[1:])
    start = 4 + 4 * ndim
    return header + raw[start:start + count * per_example]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="folder of the four full MNIST IDX files")
    source = parser.parse_args().source
    os.makedirs(OUTPUT, exist_ok=True)
    for stem in MNIST_SHA256:
        sliced = first_examples(read_verified(source, stem), KEEP[stem.split("-")[0]])
        with open(os.path.join(OUTPUT, stem + ".gz"), "wb") as f, \
                gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=f, mtime=0) as z:
            z.write(sliced)
        print(f"{stem}  {hashlib.sha256(sliced).hexdigest()}")


if __name__ == "__main__":
    main()
