"""Cut the Fashion-MNIST .npz the tests read through --data npz:PATH: tests/data/fashion-mnist-small.npz.

    apt-get install -y dataset-fashion-mnist
    python tests/data/cut_fashion_mnist_npz.py [FASHION_MNIST_DIR]

The source folder (default: where the Debian package puts the files) must hold
the four full Fashion-MNIST IDX files, plain or .gz. The package recompresses
the .gz files, so the sha256 checked first is that of their decompressed
content (``SHA256``): the slice is cut from real Fashion-MNIST only. It keeps
the first 1000 training and the first 500 test examples in the layout of
``keras.datasets.fashion_mnist``: ``x_train`` uint8[1000, 28, 28], ``y_train``
uint8[1000], ``x_test`` uint8[500, 28, 28], ``y_test`` uint8[500], saved with
``np.savez_compressed``. The zip records when it was written, so rerunning
gives other bytes but the same arrays; sha256 of each array's bytes (C order):

    x_train  7350186bf86b76af65f1c8f921436fd67c69c61ba7dd0f51a5047991359cd2d9
    y_train  a2d1512599a9270ae0b22c236d1bb6c9faf54db68c3cb38be103496028e48209
    x_test   00cc52584679205ab764cf9e1e98915407f8bb5a0ab0bd054345f1805679a298
    y_test   86ad59396c444dad595925f6a22f96a7b7a9bbe0fcaf605eaf73dddbe7daba59
"""

import argparse
import hashlib
import os

import numpy as np

from cut_mnist_slice import read_verified  # beside this script: the same verified read

SHA256 = {  # of the decompressed files, whatever gzip wraps them (the package's differs from the original)
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
KEEP = {"train": 1000, "t10k": 500}
HEADER = {"images": 16, "labels": 8}  # bytes before the data: magic and sizes, checked through the sha256
DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion-mnist-small.npz")


def first_examples(raw: bytes, stem: str) -> np.ndarray:
    """The first examples of the IDX file ``stem`` (its content ``raw``), as keras.datasets shapes them."""
    split, kind = stem.split("-")[:2]
    body = np.frombuffer(raw, np.uint8, offset=HEADER[kind])
    shape = (-1, 28, 28) if kind == "images" else (-1,)
    return body.reshape(shape)[:KEEP[split]].copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default=DEFAULT_SOURCE, help="folder of the four full IDX files")
    source = parser.parse_args().source
    names = {"train-images-idx3-ubyte": "x_train", "train-labels-idx1-ubyte": "y_train",
             "t10k-images-idx3-ubyte": "x_test", "t10k-labels-idx1-ubyte": "y_test"}
    arrays = {names[stem]: first_examples(read_verified(source, stem, SHA256, "Fashion-MNIST"), stem)
              for stem in SHA256}
    np.savez_compressed(OUTPUT, **arrays)
    for key, array in arrays.items():
        print(f"{key:8} {hashlib.sha256(array.tobytes()).hexdigest()}  {array.dtype}{list(array.shape)}")


if __name__ == "__main__":
    main()
