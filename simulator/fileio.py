"""Reading and writing user files safely: one place for both rules.

* :func:`read_npz` reads an ``.npz`` without pickle and turns every way the file can be bad
  (truncated, not a zip, a bare ``.npy``, object arrays) into one error naming it.
* :func:`atomic_write` writes to a temporary file beside the target and renames it over the
  target only when the writer finished: a full disk, a file-size limit or a crash leaves the
  previous file (or none), never a truncated one that looks valid.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np


def read_npz(path: str | Path, error: type[Exception]) -> dict[str, np.ndarray]:
    """All arrays of the ``.npz`` at ``path`` (``allow_pickle=False``); ``error(message)``
    is raised, naming the file, when it is not a readable archive of plain arrays."""
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a .npy: one bare array
            raise error(f"{path}: a single .npy array, not an .npz archive (np.savez writes "
                        f"one, keyed by name)")
        with z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, error):
            raise
        reason = str(e)
        if "pickled" in reason:  # numpy's message for anything that is not .npy/.npz
            reason = "not an .npy/.npz file, or it holds object arrays (refused: no pickle)"
        raise error(f"{path}: not a readable .npz of arrays ({reason})") from e


@contextlib.contextmanager
def atomic_write(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds,
    delete it if not. ``suffix`` keeps an extension a writer insists on (``np.savez``)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder is there; expected a file name",
                                str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}",
                               dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, _mode_for(path))  # mkstemp made it 0600; give what open() would
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None:  # a failed write() names no file: name the one we wrote
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _mode_for(path: Path) -> int:
    """The permissions a plain ``open(path, "w")`` would leave: an existing file's own, else
    0666 less the process umask."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask
