"""Cut the character sequences the text example trains on: tests/data/fortunes.npz.

    apt-get install -y fortunes
    python tests/data/cut_fortunes.py [FORTUNES_DIR]

Reads Debian's fortune files ``computers`` and ``science`` (package ``fortunes``,
1:1.99.1-7.3; their sha256 checked first, ``SHA256``) and keeps each fortune
(the text between lines holding only ``%``) whose characters are all printable
ASCII once its whitespace runs become one space: its first LENGTH + 1 characters
as token ids (``TOKENS``: 0 pads, 1 masks, then ' ' .. '~'), padded with 0.
Every fifth fortune goes to the test split, the rest to training, in file order.
Arrays (``np.savez_compressed``; sha256 of each array's bytes, C order, below):
``x_train`` uint8[N, 97] the ids, ``length_train`` int32[N] how many are
characters (the rest pad), and the same for ``test``:

    x_train       uint8[1316, 97]  f5b6fb5f306a1bb4518f1f2d3a3b1ca427f9bf312bc083b98b5fd40f64c03aa5
    length_train  int32[1316]      1c063729d465cee75a6ed614124e45bcc762a9f4f349c3669952bd2c67395c19
    x_test        uint8[329, 97]   b3bba2e168856344dd2b7ef11e916b790ff28edceeb9176c674f2f1485518eaf
    length_test   int32[329]       85141d4a24782126c320b24e1a9bfeb41a34f7a8e0202a87cc8f87ca69d1e868
"""

import argparse
import hashlib
import os

import numpy as np

SHA256 = {
    "computers": "a86be224d9f733b88eeaf8a46ea0427e05cc69c69edcf5f6db47ddf561ca37fd",
    "science": "7ab350b142ee6c70c1d8517c5a1b3790c09b190a62859427cad98e6e35a19fcc",
}
LENGTH = 96  # characters a model reads; it predicts each next one, so examples hold LENGTH + 1
PAD, MASK = 0, 1
FIRST = 2  # the id of ' '; '~' is FIRST + 94
VOCABULARY = FIRST + 95
DEFAULT_SOURCE = "/usr/share/games/fortunes"
OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fortunes.npz")


def fortunes(text: str) -> list[str]:
    """The fortunes of a fortune file, whitespace runs made one space; those with other than printable ASCII dropped."""
    kept = []
    for fortune in text.split("\n%\n"):
        words = " ".join(fortune.split())
        if words and all(" " <= c <= "~" for c in words):
            kept.append(words)
    return kept


def tokens(fortune: str) -> tuple[np.ndarray, int]:
    """Its first LENGTH + 1 characters as ids, padded; and how many are characters."""
    ids = np.full(LENGTH + 1, PAD, np.uint8)
    used = fortune[:LENGTH + 1]
    ids[:len(used)] = [ord(c) - ord(" ") + FIRST for c in used]
    return ids, len(used)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default=DEFAULT_SOURCE)
    args = parser.parse_args()
    examples = []
    for name, expected in SHA256.items():
        with open(os.path.join(args.source, name), "rb") as f:
            raw = f.read()
        if hashlib.sha256(raw).hexdigest() != expected:
            raise SystemExit(f"{name}: sha256 {hashlib.sha256(raw).hexdigest()}, expected {expected}")
        examples += [tokens(fortune) for fortune in fortunes(raw.decode("utf-8", errors="replace"))]
    splits = {"train": [e for i, e in enumerate(examples) if i % 5], "test": examples[::5]}
    arrays = {}
    for split, chosen in splits.items():
        arrays[f"x_{split}"] = np.stack([ids for ids, _ in chosen])
        arrays[f"length_{split}"] = np.array([length for _, length in chosen], np.int32)
    np.savez_compressed(OUTPUT, **arrays)
    for key, array in arrays.items():
        print(f"{key:13} {array.dtype}{list(array.shape)} {hashlib.sha256(array.tobytes()).hexdigest()}")


if __name__ == "__main__":
    main()
