"""The IDX reader and the MNIST loader: bundled files, full-format files, rejections, fuzzing."""

from __future__ import annotations

import gzip
import hashlib
import re
from importlib.resources import files

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reference import InvalidInput
from reference.idx import IDXFormatError, read_idx
from reference.mnist import (
    SAMPLE_IMAGES,
    SAMPLE_LABELS,
    as_float_features,
    load_mnist,
    train_test_split,
)

CLASS_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


def _idx_bytes(array, magic=None):
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x00000800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(s.to_bytes(4, "big") for s in array.shape)
    return header + array.tobytes()


def _write(path, data, *, compress=False):
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


@pytest.fixture(scope="module")
def sample():
    return load_mnist()


# --- the bundled sample ------------------------------------------------------------------------


def test_bundled_files_match_the_checksums_in_their_readme():
    data = files("reference.data")
    readme = (data / "README.md").read_text(encoding="utf-8")
    for name in (SAMPLE_IMAGES, SAMPLE_LABELS):
        row = next(line for line in readme.splitlines() if line.startswith(f"| {name} "))
        expected = re.search(r"\b[0-9a-f]{64}\b", row).group(0)
        assert hashlib.sha256((data / name).read_bytes()).hexdigest() == expected, name


def test_bundled_sample_shapes_dtypes_and_class_counts(sample):
    images, labels = sample
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == CLASS_COUNTS
    # Real digits: a dark background with bright strokes, not noise or a constant.
    assert images.max() == 255 and np.median(images) == 0
    assert 0.08 < (images > 127).mean() < 0.2


def test_float_features_and_the_8000_2000_split(sample):
    images, labels = sample
    X = as_float_features(images)
    assert X.shape == (10000, 784) and X.dtype == np.float64
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_array_equal(X[17].reshape(28, 28) * 255.0, images[17])
    X_train, y_train, X_test, y_test = train_test_split(X, labels)
    assert X_train.shape == (8000, 784) and X_test.shape == (2000, 784)
    np.testing.assert_array_equal(y_test, labels[8000:])
    # The shuffle makes the test part contain every class in roughly its share.
    assert np.bincount(y_test, minlength=10).min() > 150


def test_split_returns_copies(sample):
    X = as_float_features(sample[0][:20])
    y = sample[1][:20].copy()
    X_train, *_ = train_test_split(X, y, n_train=10)
    X_train[:] = -1.0
    assert X.min() == 0.0


# --- full-format files the user points at -----------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_reads_user_files_raw_or_gzip_whatever_their_name(tmp_path, sample, compress):
    images, labels = sample[0][:300], sample[1][:300]
    # Names deliberately lie about compression: detection is by magic bytes.
    img = _write(tmp_path / "train-images.idx3-ubyte.gz", _idx_bytes(images), compress=compress)
    lab = _write(tmp_path / "train-labels.idx1-ubyte", _idx_bytes(labels), compress=compress)
    got_images, got_labels = load_mnist(img, lab)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.flags.writeable


# --- rejections --------------------------------------------------------------------------------


def _good_labels():
    return _idx_bytes(np.arange(10, dtype=np.uint8))


REJECTIONS = [
    ("empty", b"", r"magic number alone needs 4"),
    ("short magic", b"\x00\x00\x08", r"magic number alone needs 4"),
    ("float32 idx", b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + b"\0" * 4, r"float32"),
    ("2-d ubyte", b"\x00\x00\x08\x02" + (1).to_bytes(4, "big") * 2 + b"\0", r"2 dimensions"),
    (
        "png file",
        b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
        r"not an MNIST IDX file: magic number 0x89504E47",
    ),
    ("truncated dims", b"\x00\x00\x08\x03" + (5).to_bytes(4, "big"), r"truncated IDX header"),
    ("truncated data", _good_labels()[:-3], r"announces shape \(10,\) = 10 bytes.*only 7"),
    ("too long", _good_labels() + b"\x01", r"too long"),
    ("header claims 2**96", b"\x00\x00\x08\x03" + b"\xff" * 12 + b"\0" * 9, r"truncated IDX file"),
]


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize(
    ("data", "message"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS]
)
def test_rejects_malformed_files_with_a_clear_message(tmp_path, data, message, compress):
    path = _write(tmp_path / "bad.idx", data, compress=compress)
    with pytest.raises(IDXFormatError, match=message) as info:
        read_idx(path)
    assert "bad.idx" in str(info.value)
    assert isinstance(info.value, InvalidInput) and isinstance(info.value, ValueError)


def test_rejects_truncated_gzip_stream(tmp_path, sample):
    data = gzip.compress(_idx_bytes(sample[1][:500]), mtime=0)
    path = _write(tmp_path / "cut.gz", data[: len(data) // 2])
    with pytest.raises(IDXFormatError, match="damaged or truncated gzip stream"):
        read_idx(path)


def test_rejects_mismatched_counts_swapped_files_and_bad_labels(tmp_path, sample):
    images, labels = sample[0][:20], sample[1][:20]
    img = _write(tmp_path / "img", _idx_bytes(images))
    lab19 = _write(tmp_path / "lab19", _idx_bytes(labels[:19]))
    with pytest.raises(IDXFormatError, match=r"counts differ: 20 images .* 19 labels"):
        load_mnist(img, lab19)
    lab = _write(tmp_path / "lab", _idx_bytes(labels))
    with pytest.raises(IDXFormatError, match=r"expected MNIST images of shape \(n, 28, 28\)"):
        load_mnist(lab, img)
    small = _write(tmp_path / "small", _idx_bytes(images[:, :14, :14]))
    with pytest.raises(IDXFormatError, match=r"\(20, 14, 14\)"):
        load_mnist(small, lab)
    bad = _write(tmp_path / "bad", _idx_bytes(np.full(20, 10)))
    with pytest.raises(IDXFormatError, match="digits 0-9, found 10"):
        load_mnist(img, bad)
    with pytest.raises(InvalidInput, match="must be given together"):
        load_mnist(img)


def test_missing_file_is_not_a_format_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: as_float_features(np.zeros((2, 28, 28))), "uint8"),
        (lambda: as_float_features(np.zeros((2, 784), dtype=np.uint8)), "shape"),
        (lambda: train_test_split(np.zeros((5, 2)), np.zeros(4)), "same number of rows"),
        (lambda: train_test_split(np.zeros((5, 2)), np.zeros(5), n_train=5), "n_test=0"),
        (lambda: train_test_split(np.zeros((5, 2)), np.zeros(5), n_train=3, n_test=3), "<= 5"),
    ],
)
def test_helper_argument_validation(call, message):
    with pytest.raises(InvalidInput, match=message):
        call()


# --- fuzzing: anything malformed gives IDXFormatError, nothing else ---------------------------


@st.composite
def _mutated_idx(draw):
    """A valid small IDX file, then damaged: a header byte changed, cut, or extended."""
    ndim = draw(st.sampled_from([1, 3]))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim)))
    data = bytearray(_idx_bytes(np.zeros(shape, dtype=np.uint8) + 7))
    header_len = 4 + 4 * ndim
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, header_len - 1))
        data[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data) + 3))
    data = bytes(data[:cut]) + draw(st.binary(max_size=3))
    return data


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.one_of(st.binary(max_size=64), _mutated_idx()), compress=st.booleans())
@example(data=b"\x00\x00\x08\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", compress=False)
@example(data=b"\x1f\x8b\x08\x00", compress=False)
def test_fuzz_reader_only_raises_idx_format_error(tmp_path, data, compress):
    path = _write(tmp_path / "fuzz.idx", data, compress=compress)
    try:
        array = read_idx(path)
    except IDXFormatError:
        return
    # Accepted: then it really is a well-formed unsigned-byte IDX file.
    assert array.dtype == np.uint8 and array.ndim in (1, 3)
    assert _idx_bytes(array) == data
