"""Reader for the IDX format of the MNIST files, strict about what it accepts.

An IDX file is a big-endian header followed by the raw values::

    bytes 0-1   0x00 0x00
    byte  2     dtype code (0x08 = unsigned byte, the only one MNIST uses)
    byte  3     number of dimensions d
    4 * d       the size of each dimension, unsigned 32-bit big-endian
    rest        prod(sizes) values, row-major, nothing after them

MNIST uses two magic numbers (the first four bytes): ``0x00000803`` for
images (n x rows x cols) and ``0x00000801`` for labels (n). Files may be
gzip-compressed (they begin with ``1f 8b``); the reader detects this from the
bytes, not from the file name.

Every way a file can be wrong (truncated, foreign, too long, a damaged gzip
stream) raises :class:`IDXFormatError` with a message naming the file and the
rule it breaks; nothing is allocated from sizes the file merely claims. A
claim larger than the file can hold is refused before any data is read: a
raw file holds its size minus the header; a gzip file at most 1032 times its
size (deflate's limit: a 258-byte match in 2 bits). Otherwise the data is
decompressed and read in 1 MiB chunks and refused as soon as it ends short.
"""

from __future__ import annotations

import gzip
import os
import stat
import zlib

import numpy as np

from reference._validation import InvalidInput

__all__ = ["IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "IDXFormatError", "read_idx"]

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08
_DTYPE_NAMES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}
_CHUNK = 1 << 20
#: Deflate codes at most 258 bytes in 2 bits: no gzip file decompresses to more
#: than 1032 times its own size.
_DEFLATE_MAX_RATIO = 1032


class IDXFormatError(InvalidInput):
    """A file is not a well-formed MNIST IDX file (truncated, foreign or too long).

    A subclass of :class:`reference.InvalidInput` (hence of ValueError).
    """


def _read_at_most(stream, n):
    """Read up to ``n`` bytes in chunks into a growing buffer: memory follows the data read."""
    buf = bytearray()
    while len(buf) < n:
        part = stream.read(min(n - len(buf), _CHUNK))
        if not part:
            break
        buf += part
    return buf


def _parse(stream, name, *, capacity=None, bound=None):
    """Parse one IDX stream that can yield at most ``capacity`` bytes (None: unknown).

    ``bound``, when ``capacity`` is only an upper bound (a gzip file), is the
    clause of the message that says so; without it ``capacity`` is exact (a
    raw file's size).
    """
    header = _read_at_most(stream, 4)
    if len(header) < 4:
        raise IDXFormatError(
            f"{name}: truncated IDX file: {len(header)} bytes, the magic number alone needs 4"
        )
    magic = int.from_bytes(header, "big")
    zero, dtype_code, ndim = header[:2], header[2], header[3]
    if zero != b"\x00\x00" or dtype_code != _UBYTE or ndim not in (1, 3):
        dtype_name = _DTYPE_NAMES.get(dtype_code, "unknown dtype")
        raise IDXFormatError(
            f"{name}: not an MNIST IDX file: magic number 0x{magic:08X} "
            f"(dtype code 0x{dtype_code:02X} = {dtype_name}, {ndim} dimensions); expected "
            f"0x{IDX_IMAGES_MAGIC:08X} (unsigned-byte images, 3 dimensions) or "
            f"0x{IDX_LABELS_MAGIC:08X} (unsigned-byte labels, 1 dimension)"
        )
    dims_bytes = _read_at_most(stream, 4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise IDXFormatError(
            f"{name}: truncated IDX header: magic 0x{magic:08X} announces {ndim} dimension "
            f"sizes ({4 * ndim} bytes), only {len(dims_bytes)} bytes follow"
        )
    shape = tuple(int.from_bytes(dims_bytes[4 * i : 4 * i + 4], "big") for i in range(ndim))
    expected = 1
    for size in shape:
        expected *= size  # a Python int: 3 sizes below 2**32 cannot overflow it
    if capacity is not None:
        room = max(capacity - 4 - 4 * ndim, 0)
        if expected > room:
            found = f"only {room} present" if bound is None else bound
            raise IDXFormatError(
                f"{name}: truncated IDX file: header announces shape {shape} = {expected} "
                f"bytes of data, {found}"
            )
    payload = _read_at_most(stream, expected)
    if len(payload) < expected:
        raise IDXFormatError(
            f"{name}: truncated IDX file: header announces shape {shape} = {expected} bytes "
            f"of data, only {len(payload)} present"
        )
    extra = _read_at_most(stream, 1)
    if extra:
        raise IDXFormatError(
            f"{name}: IDX file too long: data continues after the {expected} bytes "
            f"announced by the header (shape {shape})"
        )
    # The buffer is this call's own: the array may keep it (writeable, no copy).
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def read_idx(path):
    """Read one unsigned-byte IDX file (raw or gzip) into a uint8 array.

    Parameters
    ----------
    path : str or os.PathLike
        An MNIST images file (magic ``0x00000803``) or labels file (magic
        ``0x00000801``), gzip-compressed or not. Compression is detected from
        the first two bytes (``1f 8b``), not from the file name.

    Returns
    -------
    numpy.ndarray of uint8
        Shape ``(n, rows, cols)`` for images, ``(n,)`` for labels. A fresh,
        writeable array.

    Raises
    ------
    IDXFormatError
        The magic number is not one of the two above (another dtype, another
        number of dimensions, not an IDX file), the header or data is
        truncated, data follows the announced payload, or the gzip stream is
        damaged. The message names the file and what was found.
    FileNotFoundError, PermissionError
        As :func:`open` raises them.

    Notes
    -----
    Sizes claimed by the header are never trusted for allocation. A claim
    larger than the file can hold (a raw file: its size minus the header; a
    gzip file: 1032 times its size, deflate's largest expansion) is refused
    before any data is read, so a damaged header that announces 2**96 bytes,
    or a small gzip file that announces 2**32 images, gives a "truncated"
    error at once, not a MemoryError. Otherwise the data is decompressed in
    1 MiB chunks into a buffer that grows with what is actually there, and a
    stream that ends short is refused when it ends.

    Examples
    --------
    >>> from importlib.resources import as_file, files
    >>> with as_file(files("reference.data") / "mnist-sample-labels-idx1-ubyte.gz") as p:
    ...     labels = read_idx(p)
    >>> labels.shape, labels.dtype
    ((10000,), dtype('uint8'))
    """
    name = os.fspath(path)
    with open(path, "rb") as raw:
        info = os.fstat(raw.fileno())
        size = info.st_size if stat.S_ISREG(info.st_mode) else None
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if not compressed:
            return _parse(raw, name, capacity=size)
        capacity = None if size is None else _DEFLATE_MAX_RATIO * size
        bound = (
            f"but a {size}-byte gzip file decompresses to at most {capacity} bytes (deflate "
            f"expands at most {_DEFLATE_MAX_RATIO}-fold)"
        )
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                return _parse(stream, name, capacity=capacity, bound=bound)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise IDXFormatError(f"{name}: damaged or truncated gzip stream: {exc}") from exc
