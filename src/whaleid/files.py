"""Writing outputs safely: atomic files, names no user string can steer, one clear line on a full disk.

- :func:`atomic_path` writes through a temp file in the target's folder, fsyncs it and
  renames it into place: a crash or a full disk leaves the old file or none, never half
  of one. Temp names carry the writer's pid (``.wid<pid>.<random>.tmp``, short whatever
  the target's length), so the first write of a later run into a folder removes the
  leftovers of killed runs without touching those of a live writer.
- :func:`safe_name` turns an image name (a CSV cell, a loose file's path) into one file
  name inside an output folder. Names from users may be absolute, hold ``../``, be too
  long for the file system or differ only in their extension (``b.jpg``, ``b.png``);
  outputs built from them directly overwrote photos outside the output folder.
- :func:`read_user_csv` reads a CSV a person handed in, any failure one line naming it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from whaleid.errors import UserError

__all__ = [
    "DISK_FULL",
    "atomic_path",
    "disk_full_as_user_error",
    "inside",
    "is_disk_full",
    "output_path",
    "read_user_csv",
    "safe_name",
    "spreadsheet_safe",
]

#: errno values that mean "no room left": the device, the user's quota, or the file size limit.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: numpy's ``tofile`` (under ``np.save``) reports a full disk as a short write with no errno.
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
_TMP = re.compile(r"\.wid(\d+)\.[a-z0-9_]+\.tmp")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
#: Readable part of a safe name; with the hash and suffix a name stays far below the usual 255-byte limit.
STEM_CHARS = 48
_cleaned: set[str] = set()
_cleaned_lock = threading.Lock()


def safe_name(name: str, suffix: str = "") -> str:
    """One file name for ``name``: a readable tail of it plus a hash of all of it, then ``suffix``.

    Only ``[A-Za-z0-9_-]`` survive from ``name`` (its extension folded in: ``b.jpg`` ->
    ``b_jpg-<hash>``), so the result is never a path, never hidden, never too long, and
    two different names never share it.
    """
    if not re.fullmatch(r"(\.[A-Za-z0-9]{1,8})?", suffix):
        raise ValueError(f"bad file suffix {suffix!r}")
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    stem = _UNSAFE.sub("_", name).strip("_")[-STEM_CHARS:].lstrip("_")
    return f"{stem}-{digest}{suffix}" if stem else f"{digest}{suffix}"


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` (links resolved) lies in ``folder``: for names read back from files users can edit."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def read_user_csv(path: str | os.PathLike, what: str, **kwargs) -> pd.DataFrame:
    """A CSV a person handed in (``what`` says which kind), or one :class:`UserError` line naming the file."""
    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: empty {what} (no header)") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a {what} (not UTF-8 text)") from None
    except (pd.errors.ParserError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: not a {what} ({reason})") from None
    except OSError as error:
        raise UserError(f"cannot read {what} {path}: {error.strerror or error}") from None


def spreadsheet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with a quote before every text cell a spreadsheet would run as a formula (``=``, ``+``,
    ``-``, ``@``, a tab or CR first): exported CSVs carry ids and notes people typed, and are opened in
    spreadsheets. Numbers (a negative latitude) stay numbers."""
    formula = ("=", "+", "-", "@", "\t", "\r")
    return table.apply(
        lambda column: (
            column.map(lambda v: f"'{v}" if isinstance(v, str) and v.startswith(formula) else v)
            if column.dtype == object or pd.api.types.is_string_dtype(column.dtype)
            else column
        )
    )


def is_disk_full(error: BaseException) -> bool:
    """An errno of :data:`DISK_FULL`, or numpy's errno-less short write, anywhere in the chain (libraries wrap them)."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return any(
        isinstance(e, OSError) and (e.errno in DISK_FULL or (e.errno is None and _SHORT_WRITE.fullmatch(str(e))))
        for e in chain
    )


def output_path(path: str | os.PathLike, option: str, folder: bool) -> None:
    """Check an output ``path`` before any work: a folder option refuses a file, a file option a folder.

    Found only at the end, these cost the whole run and gave ``FileExistsError``; the
    file in the way is left as it is. A file among its parents is refused too.
    """
    path = Path(path)
    wanted = "a folder" if folder else "a file name"
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{option} {path}: {parent} is a file, not a folder; give {wanted} elsewhere")
            break
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder: give a folder (it is made if missing)")
    if not folder and path.is_dir():
        raise UserError(f"{option} {path} is a folder: give a file name, not a folder")


@contextlib.contextmanager
def disk_full_as_user_error(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk while writing ``path`` into one line a person can act on."""
    try:
        yield
    except UserError:
        raise
    except BaseException as error:
        if is_disk_full(error):
            raise UserError(f"disk full while writing {path}: free space and re-run") from error
        raise


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":  # elsewhere os.kill(pid, 0) would kill it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def _clean_once(directory: Path) -> None:
    """Remove temp files of dead writers from ``directory``, once per process (folders of crops are big)."""
    key = os.path.abspath(directory)
    with _cleaned_lock:
        if key in _cleaned:
            return
        _cleaned.add(key)
    with os.scandir(directory) as entries:
        stale = [e.path for e in entries if (m := _TMP.fullmatch(e.name)) and not _alive(int(m.group(1)))]
    for path in stale:
        with contextlib.suppress(FileNotFoundError):  # another run cleaning too
            os.unlink(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; move it into place, synced, only if the block succeeds."""
    path = Path(path)
    with disk_full_as_user_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _clean_once(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".wid{os.getpid()}.", suffix=".tmp")
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            _fsync(tmp_path)
            os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; artifacts are meant to be shared
            os.replace(tmp_path, path)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
