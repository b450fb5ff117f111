"""Fetch a data set's files once, verify them, cache them: MNIST, Fashion-MNIST, CIFAR-10.

Where from: the URLs tensorflow-datasets uses (``SOURCES``). An environment
variable replaces a data set's base URL with any URL (``http://``, ``file://``)
of a folder that holds its files: ``JAXSEED_MNIST_MIRROR`` for MNIST,
``JAXSEED_FASHION_MNIST_MIRROR`` for Fashion-MNIST (one variable each: the two
sets use the same file names, so one mirror cannot serve both) and
``JAXSEED_CIFAR10_MIRROR`` for CIFAR-10.

Where to: ``<root>/<data set>/``, the root being the first that is set of
``$JAXSEED_DATA_DIR``, ``$TFDS_DATA_DIR/jaxseed``, ``$XDG_CACHE_HOME/jaxseed``,
then ``~/.cache/jaxseed``.

What is checked: the sha256 of every file (``File``), before it enters the
cache and again each time it is loaded from there. MNIST's checksums are those
of the decompressed files, so a mirror may wrap the same bytes in any gzip;
Fashion-MNIST's and CIFAR-10's are those tensorflow-datasets registers for the
downloads themselves. A file is written under a temporary name in the cache
folder and renamed into place only once verified, so the cache never holds a
partial or unverified file, whatever fails or interrupts the download. No file
may exceed its size cap (downloaded or decompressed) nor take longer than its
source's deadline to download, so a wrong mirror (a link to an endless file, a
server that trickles) fails as one line instead of filling the disk or hanging.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import secrets
import stat
import sys
import time
import urllib.error
import urllib.request
import zlib
from typing import Mapping, NamedTuple

from tqdm import tqdm

from jaxseed.errors import UserError

MNIST_SHA256 = {  # of the decompressed files, the same bytes on every mirror
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FASHION_MNIST_SHA256 = {  # of the .gz files, as tensorflow-datasets registers them
    "train-images-idx3-ubyte": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
# The most bytes a download, or its decompressed content, may hold, per IDX file: a bit above the full
# files' content (47,040,016, 60,008, 7,840,016 and 10,008 bytes), which any gzip of it stays under, even
# one that does not compress; so also above the .gz files (the largest, Fashion-MNIST's, is 26.4 MB).
MAX_BYTES = {
    "train-images-idx3-ubyte": 48 << 20,
    "train-labels-idx1-ubyte": 64 << 10,
    "t10k-images-idx3-ubyte": 8 << 20,
    "t10k-labels-idx1-ubyte": 16 << 10,
}
TIMEOUT_S = 30.0  # per connection attempt and per read
DEADLINE_S = 600.0  # for one whole IDX file: 26 MB take 10 minutes at 44 kB/s
CIFAR10_DEADLINE_S = 1800.0  # its 170 MB take 30 minutes at 94 kB/s
_CHUNK = 1 << 16
# Failures of the network or the server (ssl.SSLError and socket errors are OSErrors);
# a failed write to the cache is told apart where it happens.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError)


class File(NamedTuple):
    """One file of a data set, as served under the base URL and kept in the cache, and what it must be."""

    name: str
    sha256: str
    checked: str  # what sha256 is of: "download", the bytes as downloaded; "content", their gunzipped content
    max_bytes: int  # cap on the download, and on its decompressed content when that is what is hashed


class Source(NamedTuple):
    """Where a data set's files come from, what they must be, and what ``--data-dir`` takes instead."""

    url: str  # base URL holding the files
    mirror_variable: str  # environment variable that replaces url
    files: tuple[File, ...]
    offline: str  # what a --data-dir folder holds instead, for the messages that suggest it
    deadline_s: float = DEADLINE_S  # for the download of each file


def idx_files(sha256: Mapping[str, str], checked: str) -> tuple[File, ...]:
    """The four ``<stem>.gz`` files of MNIST or Fashion-MNIST, from their checksums by stem."""
    return tuple(File(stem + ".gz", digest, checked, MAX_BYTES[stem]) for stem, digest in sha256.items())


# The binary version (never the python one: unpickling runs code), as tensorflow-datasets registers it.
# Its sha256 is of the download itself, so its exact size is its cap: no other size can pass.
CIFAR10_FILE = File("cifar-10-binary.tar.gz", "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
                    "download", 170_052_171)
_IDX_OFFLINE = "the four IDX files"
SOURCES = {
    "mnist": Source("https://storage.googleapis.com/cvdf-datasets/mnist/", "JAXSEED_MNIST_MIRROR",
                    idx_files(MNIST_SHA256, "content"), _IDX_OFFLINE),
    "fashion_mnist": Source("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                            "JAXSEED_FASHION_MNIST_MIRROR", idx_files(FASHION_MNIST_SHA256, "download"),
                            _IDX_OFFLINE),
    "cifar10": Source("https://www.cs.toronto.edu/~kriz/", "JAXSEED_CIFAR10_MIRROR", (CIFAR10_FILE,),
                      f"{CIFAR10_FILE.name} or its six .bin files", CIFAR10_DEADLINE_S),
}


def cache_root() -> str:
    """The folder that holds one subfolder per data set (see the module docstring)."""
    if os.environ.get("JAXSEED_DATA_DIR"):
        return os.environ["JAXSEED_DATA_DIR"]
    if os.environ.get("TFDS_DATA_DIR"):
        return os.path.join(os.environ["TFDS_DATA_DIR"], "jaxseed")
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxseed")


def fetch(name: str) -> str:
    """The cache folder of data set ``name`` (a key of SOURCES), downloading what it lacks."""
    source = SOURCES[name]
    return download(os.path.join(cache_root(), name), source, os.environ.get(source.mirror_variable) or source.url)


def download(folder: str, source: Source, base_url: str, *, timeout: float = TIMEOUT_S) -> str:
    """Make ``folder`` hold every file of ``source``, verified, fetched from ``base_url``; return ``folder``.

    A file already in ``folder`` is rehashed by its rule (``File.checked``), so
    a copy damaged on disk is never trusted (hashing all four MNIST files, or
    CIFAR-10's 170 MB archive, takes well under a second); one that
    fails is reported on stderr, deleted, and downloaded again like a missing
    one. A download slower than the source's deadline, or with a read stalled
    for ``timeout`` seconds, fails. Raises UserError (one line) on any
    failure, leaving no partial file behind.
    """
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the data cache folder {folder} ({error.strerror}); set JAXSEED_DATA_DIR "
                        f"to a writable folder, or pass --data-dir DIR with {source.offline}") from None
    for file in source.files:
        path = os.path.join(folder, file.name)
        if not _verified_in_cache(path, file):
            _fetch_one(base_url.rstrip("/") + f"/{file.name}", path, file, source, timeout)
    return folder


class _Rejected(Exception):
    """A file that cannot be the one expected; the message completes "<file> ..."."""


def _verified_in_cache(path: str, file: File) -> bool:
    """Whether the cache holds ``path`` and it passes its check; a copy that fails is deleted."""
    if not os.path.lexists(path):
        return False
    reason = _cache_problem(path, file)
    if reason is None:
        return True
    try:
        os.remove(path)
    except OSError as error:
        raise UserError(f"{path} in the data cache {reason}; delete it ({error.strerror})") from None
    print(f"jaxseed: {path} in the data cache {reason}; deleted it, downloading it again", file=sys.stderr)
    return False


def _cache_problem(path: str, file: File) -> str | None:
    """Why the cached ``path`` fails the check of a download (completing "<path> ..."), or None."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the read
            return "is not a regular file"
        digest = _sha256(path, file.checked == "content", file.max_bytes)
    except _Rejected as error:
        return str(error)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    return None if digest == file.sha256 else f"fails its checksum ({_mismatch(digest, file)})"


def _fetch_one(url: str, path: str, file: File, source: Source, timeout: float) -> None:
    """Download ``url`` to a unique temporary name beside ``path``, verify it, rename it to ``path``."""
    # Unique, and created with O_EXCL (which follows no planted link): concurrent runs may fill one cache.
    partial = f"{path}.{secrets.token_hex(4)}.part"
    try:
        try:
            with open(partial, "xb") as f:
                digest = _stream(url, f, file.max_bytes, source, timeout)
                f.flush()
                os.fsync(f.fileno())  # the rename must not outlive the bytes after a crash
            if file.checked == "content":
                digest = _sha256(partial, True, file.max_bytes)
        except _Rejected as error:
            raise UserError(f"download of {url} {error}; the file was deleted (a broken download or a wrong "
                            "mirror?)") from None
        except OSError as error:  # the disk: _stream turned the network's OSErrors into UserError
            raise _unwritable(os.path.dirname(path), error) from None
        if digest != file.sha256:
            raise UserError(f"checksum mismatch for {url}: {_mismatch(digest, file)}; "
                            "the file was deleted (a wrong or corrupted mirror?)")
        try:
            os.replace(partial, path)
        except OSError as error:
            raise _unwritable(os.path.dirname(path), error) from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _mismatch(digest: str, file: File) -> str:
    of = " of its decompressed content" if file.checked == "content" else ""
    return f"sha256{of} is {digest}, expected {file.sha256}"


def _stream(url: str, out, max_bytes: int, source: Source, timeout: float) -> str:
    """Copy ``url``'s body to the file ``out`` with a progress bar; return the sha256 of the body.

    The body may hold at most ``max_bytes`` and must arrive within the source's deadline, checked after
    every read (so it stops at most ``timeout`` later).
    """
    digest, received, deadline = hashlib.sha256(), 0, source.deadline_s
    give_up = time.monotonic() + deadline
    try:
        with urllib.request.urlopen(url, timeout=min(timeout, deadline)) as response:
            length = response.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if length is not None and length > max_bytes:
                raise UserError(f"download of {url} is larger than expected: the server announces {length} "
                                f"bytes, at most {max_bytes} expected (a wrong mirror?)")
            # disable=None: a bar on a terminal only, so a piped stderr carries just errors.
            with tqdm(total=length, desc=os.path.basename(url), unit="B", unit_scale=True, unit_divisor=1024,
                      file=sys.stderr, disable=None, leave=False) as bar:
                # read1: what has arrived, so that a trickling server cannot hold one read for long
                while chunk := response.read1(_CHUNK):
                    received += len(chunk)
                    if received > max_bytes:
                        raise UserError(f"download of {url} is larger than expected: more than {max_bytes} "
                                        "bytes; the partial file was deleted (a wrong mirror?)")
                    if time.monotonic() > give_up:
                        raise UserError(f"download of {url} took longer than its deadline of {deadline:g} s "
                                        f"({received} bytes in); the partial file was deleted, try again, or "
                                        f"set {source.mirror_variable} to a faster mirror")
                    try:
                        out.write(chunk)
                    except OSError as error:
                        raise _unwritable(os.path.dirname(out.name), error) from None
                    digest.update(chunk)
                    bar.update(len(chunk))
    except _NETWORK_ERRORS as error:
        # URLError wraps the socket's error ("[Errno 111] Connection refused"); HTTPError reads well as is.
        plain = isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError)
        reason = error.reason if plain else error
        raise UserError(f"cannot download {url} ({reason}); to train offline pass --data-dir DIR with "
                        f"{source.offline}, or set {source.mirror_variable} to a URL that serves them") from None
    if length is not None and received != length:
        raise UserError(f"download of {url} is truncated: {received} of {length} bytes; the partial file was "
                        "deleted, try again")
    return digest.hexdigest()


def _unwritable(folder: str, error: OSError) -> UserError:
    return UserError(f"cannot write to the data cache folder {folder} ({error.strerror or error}); "
                     "set JAXSEED_DATA_DIR to a writable folder, or pass --data-dir DIR")


def _sha256(path: str, decompress: bool, max_bytes: int) -> str:
    """sha256 of the file ``path``, or with ``decompress`` of its gzip content; either may hold ``max_bytes``."""
    digest, size = hashlib.sha256(), 0
    try:
        with (gzip.open if decompress else open)(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:  # also stops a gzip bomb early
                    what = "its content is" if decompress else "it is"
                    raise _Rejected(f"is larger than expected: {what} more than {max_bytes} bytes")
                digest.update(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise _Rejected(f"is truncated or not gzip ({error})") from None
    return digest.hexdigest()
