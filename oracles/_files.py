"""Writing output files safely: never through a planted symlink, never half-written.

Every file the application writes (the report's ``--json``, the MNIST plots)
goes through :func:`open_atomic`: the data is written to a new temporary file
in the same directory, created with ``O_CREAT | O_EXCL`` (so it can be neither
an existing file nor a symlink), flushed to disk, and then moved onto the
output path with :func:`os.replace`. The rename replaces whatever directory
entry was there, a symlink included, without following it: a symlink planted
at the output path is replaced by the new regular file, and the file it
pointed to is left as it was. A reader sees either the old file or the
complete new one, never a partial write; on an error the temporary file is
removed and the output path is untouched.

:func:`output_file_problem` and :func:`output_dir_problem` say up front, before
any work is done, why a path could not be written, so a command line can
reject it as a usage error.

Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

__all__ = [
    "open_atomic",
    "output_dir_problem",
    "output_file_problem",
    "write_bytes_atomic",
    "write_text_atomic",
]

_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def _create_temporary(directory, name):
    """A new file next to the output, opened for writing; ``(fd, path)``."""
    for _ in range(100):
        tmp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            # 0o666 and the process umask, as open(path, "w") would give.
            return os.open(tmp, _FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not create a unique temporary file", str(directory))


@contextlib.contextmanager
def open_atomic(path, mode="wb", *, encoding=None):
    """Open a file object whose contents replace ``path`` atomically when the block ends.

    Parameters
    ----------
    path : str or os.PathLike
        The output file. Its directory must exist. An existing file or
        symlink there is replaced (a symlink is not followed); a directory
        there is an error.
    mode : {"wb", "w"}
        Binary or text.
    encoding : str, optional
        For text mode; default ``"utf-8"``.

    Yields
    ------
    file object
        Write to it (``json.dump(obj, fh)``, ``figure.savefig(fh, format="png")``).

    Notes
    -----
    The new file has the permissions ``open(path, "w")`` would give a new
    file (``0o666`` less the umask), not those of the file it replaces. If
    the block raises, the temporary file is removed and ``path`` keeps its old
    contents.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "data.txt"
    >>> with open_atomic(out, "w") as fh:
    ...     _ = fh.write("one\\n")
    >>> out.read_text()
    'one\\n'
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    fd, tmp = _create_temporary(path.parent, path.name)
    try:
        if mode == "w":
            fh = open(fd, "w", encoding=encoding or "utf-8")
        else:
            fh = open(fd, "wb")
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path, data):
    """Write ``data`` to ``path`` through :func:`open_atomic`; returns ``Path(path)``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "data.bin"
    >>> write_bytes_atomic(out, b"\\x00\\x01").read_bytes()
    b'\\x00\\x01'
    """
    with open_atomic(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text_atomic(path, text, *, encoding="utf-8"):
    """Write ``text`` to ``path`` through :func:`open_atomic`; returns ``Path(path)``.

    Examples
    --------
    >>> import os, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / "outside.txt").write_text("keep me")
    7
    >>> os.symlink(d / "outside.txt", d / "out.txt")  # planted at the output path
    >>> write_text_atomic(d / "out.txt", "new").read_text()
    'new'
    >>> (d / "outside.txt").read_text(), (d / "out.txt").is_symlink()
    ('keep me', False)
    """
    with open_atomic(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def _probe(directory):
    """Why a new file cannot be created in ``directory`` (an existing directory), or None."""
    try:
        fd, tmp = _create_temporary(directory, "write-probe")
    except OSError as exc:
        return f"cannot create files in {str(directory)!r}: {exc.strerror or exc}"
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    return None


def output_file_problem(path):
    """Why :func:`open_atomic` could not write ``path``, or ``None`` if it can.

    The directory must exist and accept new files (checked by creating and
    removing one), and ``path`` itself must not be a directory. An existing
    file or symlink at ``path`` is fine: it will be replaced.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> output_file_problem(d / "report.json") is None
    True
    >>> output_file_problem(d / "missing" / "report.json")  # doctest: +ELLIPSIS
    "the directory '...missing' does not exist"
    >>> output_file_problem(d)  # doctest: +ELLIPSIS
    "'...' is a directory"
    """
    path = Path(path)
    if str(path) == "" or path.name in ("", ".", ".."):
        return f"{str(path)!r} is not a file name"
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            return f"{str(path)!r} is a directory"
    except (FileNotFoundError, NotADirectoryError):
        pass  # nothing there yet, or a parent is not a directory (said below)
    except OSError as exc:
        return f"cannot inspect {str(path)!r}: {exc.strerror or exc}"
    parent = path.parent
    if not parent.exists():
        return f"the directory {str(parent)!r} does not exist"
    if not parent.is_dir():
        return f"{str(parent)!r} is not a directory"
    return _probe(parent)


def output_dir_problem(path):
    """Why files could not be written into directory ``path`` (created if missing), or ``None``.

    ``path`` may not exist yet: then its nearest existing ancestor must be a
    directory that accepts new entries. An existing ``path`` must be a
    directory (or a symlink to one) that accepts new files.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> output_dir_problem(d / "plots" / "mnist") is None
    True
    >>> (d / "taken").write_text("")
    0
    >>> output_dir_problem(d / "taken")  # doctest: +ELLIPSIS
    "'...taken' exists and is not a directory"
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            return f"{str(path)!r} exists and is not a directory"
        return _probe(path)
    if path.is_symlink():
        return f"{str(path)!r} is a symlink to nothing"
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        if ancestor.is_symlink():
            return f"{str(ancestor)!r} is a symlink to nothing"
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{str(ancestor)!r} exists and is not a directory"
    return _probe(ancestor)
