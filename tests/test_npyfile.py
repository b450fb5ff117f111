"""jaxseed.npyfile: headers of .npy and .npz files from others, read before any data."""

import io
import zipfile

import numpy as np
import pytest

from jaxseed import npyfile


def _npy(array, version=None) -> io.BytesIO:
    f = io.BytesIO()
    np.lib.format.write_array(f, array, version=version)
    f.seek(0)
    return f


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_header_says_shape_order_and_dtype(version):
    assert npyfile.header(_npy(np.zeros((3, 4), np.float16), version)) == ((3, 4), False, np.dtype(np.float16))
    assert npyfile.header(_npy(np.asfortranarray(np.zeros((3, 4), np.uint8)), version))[1] is True


def test_header_reads_no_data():
    """A header announcing a terabyte is answered from the header alone."""
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (1 << 38,)})
    f.seek(0)
    assert npyfile.header(f)[0] == (1 << 38,)


@pytest.mark.parametrize("content, message", [
    (_npy(np.zeros(2), (3, 0)).getvalue(), "is in .npy format 3.0; versions 1.0 and 2.0 are read"),
    (b"not an array at all", "is not a .npy array"),
    (_npy(np.array([None, 1], object)).getvalue(), "holds Python objects \\(dtype object\\)"),
])
def test_header_refuses(content, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        npyfile.header(io.BytesIO(content))


def _npz(**arrays) -> zipfile.ZipFile:
    f = io.BytesIO()
    np.savez(f, **arrays)
    return zipfile.ZipFile(f)


def test_npz_headers():
    archive = _npz(a=np.zeros((2, 3), np.uint8), b=np.array(["x"]))
    assert npyfile.npz_headers(archive, ("a", "b")) == {"a": ((2, 3), np.dtype(np.uint8)), "b": ((1,), np.dtype("<U1"))}
    with pytest.raises(KeyError, match="c, d"):
        npyfile.npz_headers(archive, ("a", "c", "d"))
    with pytest.raises(ValueError, match="^o holds Python objects"):
        npyfile.npz_headers(_npz(o=np.array([None], object)), ("o",))
