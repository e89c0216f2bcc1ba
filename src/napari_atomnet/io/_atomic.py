"""Atomic file writing: an export is either complete or absent, never half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


class ExportExistsError(FileExistsError):
    """Raised when an export would overwrite an existing file without permission."""

    def __init__(self, path: str | os.PathLike, why: str = "choose another name") -> None:
        super().__init__(f"{path} exists; {why} (nothing was overwritten)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    r"""Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    Parameters
    ----------
    path : path-like
        Final destination.
    overwrite : bool
        Replace an existing file.  When False (the default) an existing file raises
        :class:`ExportExistsError` before anything is written, and a file that appears while the
        block runs is not replaced either.

    Yields
    ------
    pathlib.Path
        Temporary file in the same folder (so the final rename cannot cross file systems).

    Raises
    ------
    ExportExistsError
        If ``path`` exists and ``overwrite`` is False.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "atoms.csv"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("y,x\\n")
    >>> target.read_text()
    'y,x\\n'
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExportExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            _move_no_clobber(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _move_no_clobber(tmp: Path, path: Path) -> None:
    # A hard link fails if the target exists, which makes "create only if absent" atomic.
    try:
        os.link(tmp, path)
    except FileExistsError as err:
        raise ExportExistsError(path) from err
    except OSError:  # file systems without hard links
        if path.exists():
            raise ExportExistsError(path) from None
        os.replace(tmp, path)


def write_text_atomic(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8); see :func:`atomic_path`.

    Parameters
    ----------
    path : path-like
        Destination.
    text : str
        Content.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The destination.
    """
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
