"""Reading and writing user files safely: one place for both rules.

* :func:`read_npz` reads an ``.npz`` without pickle and turns every way the file can be bad
  (truncated, corrupt, not a zip, a bare ``.npy``, object arrays, a member that is no array
  or whose header claims more data than it holds) into one error naming it.
* :func:`atomic_write` writes to a temporary file beside the target and renames it over the
  target only when the writer finished: a full disk, a file-size limit or a crash leaves the
  previous file (or none), never a truncated one that looks valid.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np


def read_npz(path: str | Path, error: type[Exception],
             keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` at ``path`` (all, or only ``keys`` that it has), read with
    ``allow_pickle=False``; ``error(message)``, naming the file, when it is not a readable
    archive of plain arrays."""
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a .npy: one bare array
            raise error(f"{path}: a single .npy array, not an .npz archive (np.savez writes "
                        f"one, keyed by name)")
        with z:
            arrays = {}
            for k in z.files:
                if keys is None or k in keys:
                    _check_member(z.zip, k, path, error)
                    arrays[k] = z[k]
            return arrays
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001  zip and .npy parsing fail in many ways (bad zlib
        # stream, unknown compression, encrypted member, a header that does not tokenize):
        # each means the file is not a readable archive
        if isinstance(e, error):
            raise
        reason = str(e)
        if "pickled" in reason:  # numpy's message for anything that is not .npy/.npz
            reason = "not an .npy/.npz file, or it holds object arrays (refused: no pickle)"
        raise error(f"{path}: not a readable .npz of arrays ({reason})") from e


def _check_member(archive: zipfile.ZipFile, key: str, path: str | Path,
                  error: type[Exception]) -> None:
    """Refuse member ``key`` unless it is an .npy array whose header asks for no more bytes
    than it holds: numpy returns other members as raw bytes, and allocates what a header
    claims (a corrupt 2**47 elements: "out of memory") before it reads."""
    name = key if key in archive.namelist() else f"{key}.npy"   # NpzFile's lookup order
    with archive.open(name) as f:
        if f.read(len(np.lib.format.MAGIC_PREFIX)) != np.lib.format.MAGIC_PREFIX:
            raise error(f"{path}: member {key!r} is not an .npy array")
        f.seek(0)
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            return  # numpy reads (or refuses) the rarer versions itself
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(f)
        if dtype.hasobject:
            return  # pickled: refused by numpy with allow_pickle=False
        claimed = math.prod(shape) * dtype.itemsize
        held = archive.getinfo(name).file_size - f.tell()
        if claimed > held:
            raise error(f"{path}: member {key!r} claims {claimed} bytes of array data "
                        f"(shape {shape}, {dtype}) but holds {held}; the file is corrupt")


@contextlib.contextmanager
def atomic_write(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds,
    delete it if not. ``suffix`` keeps an extension a writer insists on (``np.savez`` given
    a path; given an open file it adds none, which a FIFO or device target needs).

    A symlink is followed (its target is replaced, the link stays); ``/dev/stdout``,
    ``/dev/stderr`` and ``/dev/fd/N`` are written through the descriptor the process holds
    (at its position: ``>> log`` keeps what is there); another target that exists and is
    not a regular file (a FIFO, ``/dev/null``) is written directly, as ``open`` would."""
    fd = open_descriptor(path)
    if fd is not None:
        # a temp file, then its bytes through the descriptor: reopening /dev/stdout by name
        # truncated a log it was redirected to, and realpath made a pipe's a path that does
        # not exist
        handle, name = tempfile.mkstemp(suffix=suffix)
        os.close(handle)
        tmp = Path(name)
        try:
            with _naming_target(Path(path), lambda: tmp):
                yield tmp
                for stream in (sys.stdout, sys.stderr):   # what was printed comes first
                    if stream is not None:                # (None: closed, >&-)
                        stream.flush()
                with open(tmp, "rb") as src, os.fdopen(os.dup(fd), "wb") as dst:
                    shutil.copyfileobj(src, dst)
        finally:
            tmp.unlink(missing_ok=True)
        return
    if is_special_file(path):
        with _naming_target(Path(path), None):
            yield Path(path)
        return
    path = Path(os.path.realpath(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder is there; expected a file name",
                                str(path))
    tmp = None
    try:
        with _naming_target(path, lambda: tmp):
            tmp = _create_temp(path, suffix)
            yield tmp
            os.replace(tmp, path)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


_FD_PATH = re.compile(r"/dev/fd/(\d+)|/proc/(?:self|(\d+))/fd/(\d+)")


def open_descriptor(path) -> int | None:
    """The descriptor this process already holds that ``path`` names (``/dev/stdout``,
    ``/dev/stderr``, ``/dev/fd/N``, ``/proc/self/fd/N``), if it is open; else None."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    text = os.fspath(path)
    fd = {"/dev/stdout": 1, "/dev/stderr": 2}.get(text)
    m = _FD_PATH.fullmatch(text)
    if m and (m.group(2) is None or int(m.group(2)) == os.getpid()):
        fd = int(m.group(1) or m.group(3))
    if fd is None:
        return None
    try:
        os.fstat(fd)
    except OSError:
        return None
    return fd


def is_special_file(path: str | os.PathLike) -> bool:
    """``path`` is there and is neither a regular file nor a folder (``/dev/stdout``, a
    pipe, a FIFO, ``/dev/null``): written in place, as ``open`` would. ``os.stat`` follows
    /proc's links to the pipe or socket they stand for."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@contextlib.contextmanager
def _naming_target(path: Path, temp):
    """An OSError while writing names the target: a failed write() names no file, a failed
    temp file (``temp()``) its own."""
    try:
        yield
    except OSError as e:
        tmp = temp() if temp is not None else None
        if e.filename is None or (tmp is not None and e.filename == str(tmp)):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def _create_temp(path: Path, suffix: str) -> Path:
    """A new empty file beside ``path``, created with the permissions ``open`` would give
    it (an existing target keeps its own), so the kernel applies the umask and ACLs."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp{suffix}")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
        except FileExistsError:
            continue
        except OSError as e:  # no such folder, no permission: about the target, not tmp
            raise OSError(e.errno, e.strerror, str(path)) from e
        os.close(fd)
        if path.exists():
            os.chmod(tmp, mode)  # the umask applied at creation; the target's mode wins
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def names_a_folder(value: str | os.PathLike) -> bool:
    """An output file argument written as a folder, ``out/``: ``Path`` drops the slash, and
    a file named ``out`` was written."""
    text = os.fspath(value)
    if os.path.basename(text) in (".", ".."):   # out/. and out/.. name folders too
        return bool(text)
    return text.endswith(os.sep) or bool(os.altsep and text.endswith(os.altsep))


def check_writable_folder(folder: str | Path, flag: str, error: type[Exception]) -> None:
    """Make ``folder`` and refuse it in one line (``error``, naming ``flag``) if it takes no
    files (read-only, /proc): found before the work whose results would go there."""
    folder = Path(folder)
    blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()),
                   None)
    if blocker is not None:
        raise error(f"{flag}: {blocker} is a file, where a folder is needed")
    folder.mkdir(parents=True, exist_ok=True)   # an OSError here: the CLI's one line
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise error(f"{flag}: cannot write files in {folder.resolve()} "
                    f"({e.strerror or e}); choose a writable folder") from e
