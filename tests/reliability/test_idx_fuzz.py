"""The IDX reader under fuzzing: real MNIST headers mutated, gzip streams damaged, pairs mismatched.

tests/reference/test_data.py holds the table of malformed files and a fuzz
test over tiny synthetic files. This module fuzzes from the *real* bundled
files (their headers and first digits), damages the gzip layer as well as
the IDX layer, runs :func:`load_mnist` end to end on mutated pairs, and
holds every call to a time budget: the reader must answer (an array or
:class:`IDXFormatError`) in well under a second, never hang, never raise
anything else. Headers that claim more data than the file can hold are read
in a child interpreter whose address space is capped at 1 GiB: the reader
must refuse them without allocating what they claim.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from importlib.resources import files

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reference.idx import IDXFormatError, read_idx
from reference.mnist import SAMPLE_IMAGES, SAMPLE_LABELS, load_mnist

#: Seconds one read may take. A valid 3-digit file reads in ~0.1 ms.
BUDGET = 1.0
_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class _Hang(Exception):
    pass


@contextmanager
def _time_budget(seconds):
    """Fail instead of hanging: SIGALRM where available (main thread, POSIX), and a clock check."""
    main = threading.current_thread() is threading.main_thread()
    use_alarm = main and hasattr(signal, "setitimer")
    if use_alarm:

        def _raise(signum, frame):
            raise _Hang(f"read took more than {5 * seconds} s")

        previous = signal.signal(signal.SIGALRM, _raise)
        signal.setitimer(signal.ITIMER_REAL, 5 * seconds)
    started = time.perf_counter()
    try:
        yield
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - started
    assert elapsed < seconds, f"read took {elapsed:.3f} s"


def _real_prefix(filename, n):
    """The first ``n`` records of a bundled file, as a valid uncompressed IDX file."""
    raw = gzip.decompress((files("reference.data") / filename).read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    record = int(np.prod(dims[1:])) if ndim > 1 else 1
    header = raw[:4] + n.to_bytes(4, "big") + raw[8 : 4 + 4 * ndim]
    return header + raw[4 + 4 * ndim : 4 + 4 * ndim + n * record]


REAL_IMAGES = _real_prefix(SAMPLE_IMAGES, 3)  # 16-byte header + 3 x 784 bytes
REAL_LABELS = _real_prefix(SAMPLE_LABELS, 3)  # 8-byte header + 3 bytes


@st.composite
def _mutated(draw, original):
    """A real file damaged the ways files are: bytes flipped (mostly in the header), cut, extended,
    a slice duplicated or dropped."""
    data = bytearray(original)
    header = 16 if original is REAL_IMAGES else 8
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, header - 1) | st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    edit = draw(st.sampled_from(["none", "cut", "extend", "duplicate", "drop"]))
    if edit == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif edit == "extend":
        data += draw(st.binary(min_size=1, max_size=64))
    elif edit in ("duplicate", "drop") and data:
        a = draw(st.integers(0, len(data) - 1))
        b = draw(st.integers(a, min(len(data), a + 800)))
        data = data[:b] + data[a:b] + data[b:] if edit == "duplicate" else data[:a] + data[b:]
    return bytes(data)


def _read_within_budget(path):
    """``read_idx`` under the budget: an array, or ``None`` for IDXFormatError."""
    with _time_budget(BUDGET):
        try:
            return read_idx(path)
        except IDXFormatError as exc:
            assert str(path) in str(exc)
            return None


def _roundtrip(array):
    magic = (0x0800 | array.ndim).to_bytes(4, "big")
    return magic + b"".join(s.to_bytes(4, "big") for s in array.shape) + array.tobytes()


@_SETTINGS
@given(data=_mutated(REAL_IMAGES) | _mutated(REAL_LABELS), compress=st.booleans())
@example(data=REAL_IMAGES[:15], compress=False)  # header cut inside the last dimension
@example(data=REAL_IMAGES[:4] + b"\xff" * 12 + REAL_IMAGES[16:], compress=True)  # 2**96 claimed
@example(data=REAL_LABELS[:2] + b"\x0d" + REAL_LABELS[3:], compress=False)  # float32 dtype code
def test_mutated_real_files_give_an_array_or_idx_format_error_within_budget(
    tmp_path, data, compress
):
    path = tmp_path / "mutated.idx"
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    array = _read_within_budget(path)
    if array is not None:  # accepted: then it really is a well-formed file, read exactly
        assert array.dtype == np.uint8 and array.ndim in (1, 3)
        assert _roundtrip(array) == data


@st.composite
def _damaged_gzip(draw):
    stream = bytearray(gzip.compress(draw(st.sampled_from([REAL_IMAGES, REAL_LABELS])), mtime=0))
    kind = draw(st.sampled_from(["flip", "cut", "trailing garbage", "second member"]))
    if kind == "flip":  # header, deflate data, CRC32 or ISIZE
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(stream) - 1))
            stream[i] ^= draw(st.integers(1, 255))
    elif kind == "cut":
        stream = stream[: draw(st.integers(2, len(stream) - 1))]
    elif kind == "trailing garbage":
        stream += draw(st.binary(min_size=1, max_size=16))
    else:  # a valid second gzip member: its bytes continue the IDX payload
        stream += gzip.compress(draw(st.binary(min_size=1, max_size=16)), mtime=0)
    return bytes(stream)


@_SETTINGS
@given(stream=_damaged_gzip())
@example(stream=b"\x1f\x8b")
@example(stream=b"\x1f\x8b\x08\x00" + b"\x00" * 6)
def test_damaged_gzip_streams_give_idx_format_error_within_budget(tmp_path, stream):
    path = tmp_path / "damaged.gz"
    path.write_bytes(stream)
    array = _read_within_budget(path)
    if array is not None:  # a flip the format cannot see (e.g. in the gzip header's mtime)
        assert array.dtype == np.uint8


@_SETTINGS
@given(images=_mutated(REAL_IMAGES), labels=_mutated(REAL_LABELS))
@example(images=REAL_IMAGES, labels=REAL_LABELS[:-1])  # 3 images, header says 3 labels, 2 there
@example(images=REAL_LABELS, labels=REAL_IMAGES)  # swapped
def test_load_mnist_on_mutated_pairs_gives_digits_or_idx_format_error(tmp_path, images, labels):
    img, lab = tmp_path / "images.idx", tmp_path / "labels.idx"
    img.write_bytes(images)
    lab.write_bytes(labels)
    with _time_budget(BUDGET):
        try:
            x, y = load_mnist(img, lab)
        except IDXFormatError:
            return
    assert x.shape == (y.shape[0], 28, 28) and x.dtype == y.dtype == np.uint8
    assert y.max(initial=0) <= 9


@settings(_SETTINGS, max_examples=25)
@given(n_images=st.integers(0, 5), n_labels=st.integers(0, 5), compress=st.booleans())
def test_image_and_label_counts_must_agree(tmp_path, n_images, n_labels, compress):
    def write(name, data):
        path = tmp_path / name
        path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
        return path

    img = write("images", _real_prefix(SAMPLE_IMAGES, n_images))
    lab = write("labels", _real_prefix(SAMPLE_LABELS, n_labels))
    if n_images == n_labels:
        x, y = load_mnist(img, lab)
        assert x.shape == (n_images, 28, 28) and y.shape == (n_labels,)
    else:
        with pytest.raises(IDXFormatError, match=f"counts differ: {n_images} images .* {n_labels}"):
            load_mnist(img, lab)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "0 bytes, the magic number alone needs 4", id="empty file"),
        pytest.param(REAL_IMAGES[:3], "3 bytes", id="three bytes"),
        pytest.param(REAL_LABELS[:4], "announces 1 dimension sizes", id="magic only"),
        pytest.param(REAL_IMAGES[:-1], "2352 bytes of data, only 2351", id="one pixel short"),
        pytest.param(REAL_LABELS + b"\x00", "too long", id="one byte too many"),
        pytest.param(REAL_IMAGES[:3] + b"\x02" + REAL_IMAGES[4:], "2 dimensions", id="2-d images"),
        pytest.param(b"\x00\x01" + REAL_LABELS[2:], "magic number 0x00010801", id="nonzero byte 1"),
    ],
)
def test_edges_of_the_real_headers(tmp_path, data, message):
    path = tmp_path / "edge.idx"
    path.write_bytes(data)
    with pytest.raises(IDXFormatError, match=message):
        read_idx(path)


# --- claims larger than the file can hold: refused before anything is allocated -------------------

#: The address space of the child that reads a lying file (the interpreter and NumPy use ~150 MB).
ADDRESS_SPACE = 1 << 30

_READ_CAPPED = """
import resource, sys
from reference.idx import IDXFormatError, read_idx
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
try:
    read_idx(sys.argv[1])
except IDXFormatError as exc:
    print(f"IDXFormatError: {exc}")
else:
    print("accepted")
"""


def _read_capped(path):
    """``read_idx(path)`` in a fresh interpreter with a 1 GiB address space: what it printed."""
    pytest.importorskip("resource")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.run(
        [sys.executable, "-c", _READ_CAPPED, os.fspath(path), str(ADDRESS_SPACE)],
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard, not a speed test
        env=env,
        check=False,
    )
    assert "MemoryError" not in child.stdout + child.stderr, child.stderr[-2000:]
    assert child.returncode == 0, child.stderr[-2000:]
    return child.stdout


def _header(*shape):
    magic = (0x0800 | len(shape)).to_bytes(4, "big")
    return magic + b"".join(s.to_bytes(4, "big") for s in shape)


#: 2**32 - 1 images of 28 x 28: the largest count a header can claim, 3.4e12 bytes.
HUGE_CLAIM = _header(2**32 - 1, 28, 28)


@pytest.mark.parametrize("zeros_mib", [0, 1, 1536], ids=["header only", "1 MiB", "1.5 GiB"])
def test_small_gzip_claiming_2_32_images_is_refused_without_allocating_the_claim(
    tmp_path, zeros_mib
):
    # Gzip members concatenate: one member of 1 MiB of zeros (~1 kB), repeated, makes a small
    # file that really decompresses to 1.5 GiB, more than the child may allocate.
    mib = bytes(1 << 20)
    stream = gzip.compress(HUGE_CLAIM + (mib if zeros_mib else b""), mtime=0)
    stream += gzip.compress(mib, mtime=0) * max(zeros_mib - 1, 0)
    path = tmp_path / "claims-2-32-images.gz"
    path.write_bytes(stream)
    assert len(stream) < 2_000_000
    out = _read_capped(path)
    assert out.startswith("IDXFormatError: "), out
    assert f"header announces shape {(2**32 - 1, 28, 28)} = {(2**32 - 1) * 784} bytes" in out
    assert f"a {len(stream)}-byte gzip file decompresses to at most" in out


def test_raw_file_claiming_more_than_its_size_is_refused_before_reading(tmp_path):
    # 1.5 GiB of (sparse) zeros after the header: reading it all would not fit in the child.
    path = tmp_path / "claims-2-32-images.idx"
    with open(path, "wb") as f:
        f.write(HUGE_CLAIM)
        f.truncate(len(HUGE_CLAIM) + 1536 * (1 << 20))
    out = _read_capped(path)
    assert out.startswith("IDXFormatError: "), out
    assert f"bytes of data, only {1536 * (1 << 20)} present" in out


@pytest.mark.parametrize("data", [REAL_LABELS, REAL_IMAGES], ids=["labels", "images"])
def test_raw_files_cut_anywhere_are_refused(tmp_path, data):
    path = tmp_path / "cut.idx"
    header = 8 if data is REAL_LABELS else 16
    for cut in [*range(header + 2), len(data) // 2, len(data) - 1]:
        path.write_bytes(data[:cut])
        with pytest.raises(IDXFormatError, match="truncated IDX") as info:
            read_idx(path)
        if cut >= header:
            assert f"only {cut - header} present" in str(info.value)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize(
    "shape",
    [(2**21 + 1,) * 3, (2**32 - 1,) * 3, (2**31, 2**31, 3)],
    ids=["just past 2**63", "2**96", "3 * 2**62"],
)
def test_dims_whose_product_passes_2_63_are_a_format_error_not_an_overflow(
    tmp_path, shape, compress
):
    assert shape[0] * shape[1] * shape[2] > 2**63
    data = _header(*shape) + bytes(64)
    path = tmp_path / "overflow.idx"
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    with pytest.raises(IDXFormatError, match="truncated IDX file") as info:
        read_idx(path)
    assert f"{shape[0] * shape[1] * shape[2]} bytes of data" in str(info.value)
