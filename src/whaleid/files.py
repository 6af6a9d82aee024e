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
- :func:`read_table` is the one CSV reader (catalogs, boxes, crop tables, predictions):
  strict, strings only, any failure one line naming the file and the line.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import hashlib
import io
import os
import re
import stat
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from whaleid.errors import UserError

__all__ = [
    "DISK_FULL",
    "atomic_path",
    "disk_full_as_user_error",
    "inside",
    "is_disk_full",
    "output_path",
    "printable",
    "read_table",
    "read_table_lines",
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


def printable(text: str, limit: int = 40) -> str:
    """A name as it can be printed on one line: control characters escaped, long names cut."""
    shown = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _read_bytes(path: Path, what: str, error: type[UserError]) -> bytes:
    """The whole file, refusing what is not a regular file: reading a pipe would block forever."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes() if stat.S_ISREG(mode) else None
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except PermissionError:
        raise error(f"cannot read {what} {path}: permission denied") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError:  # os.stat refuses a NUL byte in the path
        raise error(f"{what} path contains a NUL byte: {str(path)!r}") from None
    if stat.S_ISDIR(mode):
        raise error(f"{what} is a folder, not a CSV: {path}")
    if data is None:
        raise error(f"{what} is not a regular file (a device, pipe or a link to one): {path}")
    return data


def _decode(data: bytes, path: Path, error: type[UserError]) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise error(f"cannot parse {path}: UTF-16 text; save it as a UTF-8 CSV")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(
            f"cannot parse {path}: not UTF-8 text (line {line}: {exc.reason}); save it as a UTF-8 CSV"
        ) from None


def _rows(text: str, path: Path, error: type[UserError]) -> tuple[list[list[str]], list[int]]:
    """The non-blank rows and the line each starts on (a quoted line break makes a row span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[list[str]] = []
    starts: list[int] = []
    start = 1
    try:
        for row in reader:
            if len(row) > 1 or (row and row[0].strip()):
                rows.append(row)
                starts.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise error(f"cannot parse {path}: line {start}: {exc} (check the quotes)") from None
    return rows, starts


def _check_field_counts(
    header: list[str], rows: list[list[str]], line_of: np.ndarray, path: Path, error: type[UserError]
) -> None:
    """A row with another field count than the header: pandas shifted or padded it silently."""
    counts = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    wrong = np.flatnonzero(counts != len(header))
    if len(wrong):
        said = [f"line {line_of[i]} has {counts[i]} field{'' if counts[i] == 1 else 's'}" for i in wrong[:3]]
        more = f" and {len(wrong) - 3} more line{'' if len(wrong) == 4 else 's'}" if len(wrong) > 3 else ""
        raise error(
            f"{path}: {', '.join(said)}{more}, the header has {len(header)} "
            "(a name that contains a comma must be in double quotes)"
        )


def _check_columns(columns: pd.Index, required: Sequence[str], path: Path, error: type[UserError]) -> None:
    """Required columns present, none twice (a second ``image`` column would hide the first)."""
    missing = [c for c in required if c not in columns]
    if missing:
        found = ", ".join(printable(c) for c in columns[:20]) if len(columns) else "none"
        raise error(f"{path}: missing required column(s) {', '.join(missing)}; found columns: {found}")
    twice = columns[columns.duplicated()].tolist()
    if twice:
        raise error(f"{path}: column(s) appear twice: {', '.join(map(printable, twice))}")


def read_table_lines(
    path: str | os.PathLike, required: Sequence[str] = (), *, what: str = "CSV", error: type[UserError] = UserError
) -> tuple[pd.DataFrame, np.ndarray]:
    """A CSV a person handed in (``what`` names its kind in messages) as strings, and the line each row starts on.

    Read with the csv module, not pandas: pandas takes a first column too many as the
    index (shifting every column), pads short rows silently and turns cells such as
    ``NA`` into missing values. Here every cell is kept exactly as written (empty cells
    are NaN), the header is stripped and lowercased, blank lines are skipped, and any
    problem (unreadable, not UTF-8, bad quotes, a row with another field count than the
    header, ``required`` columns absent, a column twice) is one ``error`` naming the
    file and the lines.
    """
    path = Path(path)
    rows, starts = _rows(_decode(_read_bytes(path, what, error), path, error), path, error)
    if not rows:
        raise error(f"{path}: empty {what} (no header and no rows)")
    if "\x00" in rows[0][0]:
        raise error(f"cannot parse {path}: binary data (NUL bytes on line 1), not a CSV")
    header = [c.strip().lower() for c in rows[0]]
    line_of = np.asarray(starts[1:], dtype=np.int64)
    _check_field_counts(header, rows[1:], line_of, path, error)
    table = pd.DataFrame(rows[1:], columns=header, dtype=object) if len(rows) > 1 else pd.DataFrame(columns=header)
    _check_columns(table.columns, required, path, error)
    return table.replace("", np.nan), line_of


def read_table(
    path: str | os.PathLike, required: Sequence[str] = (), *, what: str = "CSV", error: type[UserError] = UserError
) -> pd.DataFrame:
    """:func:`read_table_lines` without the line numbers: for tables whose errors name no line."""
    return read_table_lines(path, required, what=what, error=error)[0]


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
