"""Reading torch files a user hands us: ``weights_only=True`` always, and one error naming the
file for every way it can be unusable (not a torch file, truncated, a pickled object outside
the allowed tensor types, or not the dictionary a state dict or checkpoint is)."""
from __future__ import annotations

import os

import torch

from simulator.errors import first_line
from simulator.fileio import atomic_write


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path``, never leaving a half-written file. Through an open
    file: torch names the archive's root folder after a path it is given (the temporary
    file's random name), so the same object saved twice gave different bytes."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def load_dict(path: str | os.PathLike, error: type[Exception], what: str = "file") -> dict:
    """``torch.load(path, weights_only=True)`` of a dictionary (state dict or checkpoint);
    ``error(message)`` names ``path`` when it cannot be read or holds something else."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from e
    # torch.save writes a zip archive (or, in the legacy format, a pickle, protocol >= 2)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise error(f"cannot read {what} {path}: not a torch file (neither the zip archive "
                    f"nor the pickle torch.save writes)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as e:  # any unpickling failure means "not a file we can use"
        # torch's first line; its advice to retry with weights_only=False is not ours to give
        reason = first_line(e)
        if "weights_only" in reason or "weights only" in reason.lower():   # torch 2.6+ words
            reason = "it holds objects other than tensors and plain containers (refused)"
        elif head.startswith(b"PK"):
            # a cut archive reads as "[Errno 22] Invalid argument" or miniz's long advice
            reason = f"damaged or truncated ({reason.split('. ')[0]})"
        raise error(f"cannot read {what} {path}: {reason}") from e
    if not isinstance(obj, dict):
        raise error(f"{what} {path} holds a {type(obj).__name__}, not a dictionary of tensors")
    return obj


def check_finite(state: dict, path, error: type[Exception], what: str = "weights") -> None:
    """Refuse a state dict with a NaN or infinite entry, naming the first such tensor: the
    model would export, compress or train on it and fail later, or quietly compute NaN."""
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            raise error(f"{what} {path}: {name} holds NaN or infinite values")
