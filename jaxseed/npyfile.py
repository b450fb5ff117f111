"""Reading ``.npy`` and ``.npz`` files from others: each array's header before its data.

A header says an array's dtype and shape, so a crafted file is refused before any of
its (possibly huge) body is read; object arrays, whose data would be unpickled, are
refused from the header too. Every reader of such files in jaxseed goes through here.
"""

from __future__ import annotations

import zipfile

import numpy as np

_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the .npy array ``f`` is at, from its header alone.

    Raises ValueError for another format, a .npy version other than 1.0 and 2.0, or Python objects.
    """
    try:
        version = np.lib.format.read_magic(f)
        if version in _READERS:
            shape, fortran, dtype = _READERS[version](f)  # numpy caps a header at 10,000 bytes
    except ValueError as error:  # numpy's words for a damaged header
        raise ValueError(f"is not a .npy array ({error})") from None
    if version not in _READERS:
        raise ValueError(f"is in .npy format {version[0]}.{version[1]}; versions 1.0 and 2.0 are read")
    if dtype.hasobject:
        raise ValueError(f"holds Python objects (dtype {dtype}); only plain arrays are read, never pickles")
    return shape, fortran, dtype


def npz_headers(archive: zipfile.ZipFile, keys: tuple[str, ...]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each array ``keys`` names in an .npz, from its header alone.

    Raises KeyError naming the missing keys, or ValueError ("KEY <why>") for an array that is not a plain .npy one.
    """
    members = set(archive.namelist())
    missing = [key for key in keys if key + ".npy" not in members]
    if missing:
        raise KeyError(", ".join(missing))
    headers = {}
    for key in keys:
        with archive.open(key + ".npy") as member:
            try:
                shape, _, dtype = header(member)
            except ValueError as error:
                raise ValueError(f"{key} {error}") from None
        headers[key] = shape, dtype
    return headers
