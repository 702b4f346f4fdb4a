"""MNIST digits: the bundled 10,000-digit sample or the full files, as arrays.

The sample (``reference/data/``, provenance and licence in its README) is a
fixed shuffle of 10,000 real MNIST digits, so any prefix is roughly
class-balanced and :func:`train_test_split` can split by position.
"""

from __future__ import annotations

from importlib.resources import as_file, files

import numpy as np

from reference._validation import InvalidInput
from reference.idx import IDXFormatError, read_idx

__all__ = [
    "SAMPLE_IMAGES",
    "SAMPLE_LABELS",
    "as_float_features",
    "load_mnist",
    "train_test_split",
]

SAMPLE_IMAGES = "mnist-sample-images-idx3-ubyte.gz"
SAMPLE_LABELS = "mnist-sample-labels-idx1-ubyte.gz"


def _read_bundled(filename):
    with as_file(files("reference.data") / filename) as path:
        return read_idx(path)


def load_mnist(images_path=None, labels_path=None):
    """Load MNIST images and labels, checked against each other.

    Parameters
    ----------
    images_path, labels_path : str or os.PathLike, optional
        IDX files (raw or gzip), e.g. the full ``train-images-idx3-ubyte.gz``
        and ``train-labels-idx1-ubyte.gz``. Give both or neither; with neither,
        the bundled 10,000-digit sample is loaded.

    Returns
    -------
    images : uint8 array, shape ``(n, 28, 28)``
    labels : uint8 array, shape ``(n,)``, values 0-9

    Raises
    ------
    IDXFormatError
        A file is not a well-formed IDX file (see :func:`reference.idx.read_idx`),
        the images file holds labels or the other way round, the images are
        not 28 x 28, a label is not a digit 0-9, or the counts differ.
    InvalidInput
        Only one of the two paths was given.

    Examples
    --------
    >>> images, labels = load_mnist()
    >>> images.shape, labels.shape, int(labels.max())
    ((10000, 28, 28), (10000,), 9)
    """
    if (images_path is None) != (labels_path is None):
        raise InvalidInput(
            "images_path and labels_path must be given together (or both omitted for the "
            f"bundled sample), got images_path={images_path!r}, labels_path={labels_path!r}"
        )
    if images_path is None:
        images, labels = _read_bundled(SAMPLE_IMAGES), _read_bundled(SAMPLE_LABELS)
        images_name, labels_name = SAMPLE_IMAGES, SAMPLE_LABELS
    else:
        images, labels = read_idx(images_path), read_idx(labels_path)
        images_name, labels_name = str(images_path), str(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IDXFormatError(
            f"{images_name}: expected MNIST images of shape (n, 28, 28), got {images.shape}"
        )
    if labels.ndim != 1:
        raise IDXFormatError(f"{labels_name}: expected labels of shape (n,), got {labels.shape}")
    if labels.size and labels.max() > 9:
        raise IDXFormatError(f"{labels_name}: labels must be digits 0-9, found {int(labels.max())}")
    if images.shape[0] != labels.shape[0]:
        raise IDXFormatError(
            f"image and label counts differ: {images.shape[0]} images in {images_name}, "
            f"{labels.shape[0]} labels in {labels_name}"
        )
    return images, labels


def as_float_features(images):
    """Flatten uint8 images to float64 rows scaled to ``[0, 1]``.

    Parameters
    ----------
    images : uint8 array, shape ``(n, rows, cols)``

    Returns
    -------
    float64 array, shape ``(n, rows * cols)``, ``pixel / 255``. A new array.

    Examples
    --------
    >>> X = as_float_features(np.full((2, 28, 28), 255, dtype=np.uint8))
    >>> X.shape, X.dtype, float(X.max())
    ((2, 784), dtype('float64'), 1.0)
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise InvalidInput(
            f"images must be a uint8 array of shape (n, rows, cols), got dtype {images.dtype} "
            f"and shape {images.shape}"
        )
    return images.reshape(images.shape[0], -1).astype(np.float64) / 255.0


def train_test_split(X, y, *, n_train=8000, n_test=None):
    """Split by position: the first ``n_train`` rows train, the next ``n_test`` test.

    The bundled sample is already shuffled, so a split by position is a
    random, reproducible split. With the defaults it gives 8,000 training and
    2,000 test digits.

    Parameters
    ----------
    X : array, shape ``(n, ...)``
    y : array, shape ``(n,)``
    n_train : int
    n_test : int, optional
        Defaults to all the rows after the training rows.

    Returns
    -------
    X_train, y_train, X_test, y_test : copies of the rows

    Examples
    --------
    >>> X_train, y_train, X_test, y_test = train_test_split(np.zeros((10, 2)), np.arange(10),
    ...                                                     n_train=8)
    >>> X_train.shape, y_test.tolist()
    ((8, 2), [8, 9])
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim < 1 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise InvalidInput(
            f"X and y must have the same number of rows (y 1-D), got shapes {X.shape} and {y.shape}"
        )
    n = X.shape[0]
    if n_test is None:
        n_test = n - n_train
    if n_train < 1 or n_test < 1 or n_train + n_test > n:
        raise InvalidInput(
            f"n_train and n_test must be >= 1 with n_train + n_test <= {n} rows, "
            f"got n_train={n_train}, n_test={n_test}"
        )
    stop = n_train + n_test
    return X[:n_train].copy(), y[:n_train].copy(), X[n_train:stop].copy(), y[n_train:stop].copy()
