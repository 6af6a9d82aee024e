"""Output files: safe names for any user string, atomic writes, a full disk, leftovers of killed runs."""

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import whaleid.files as files
from whaleid.errors import UserError
from whaleid.files import STEM_CHARS, atomic_path, inside, safe_name

ROOT = Path(__file__).resolve().parents[1]
# Names a CSV cell or a loose file's path can hold: absolute, climbing, long, unicode, line breaks (no NUL).
HOSTILE = st.one_of(
    st.text(st.characters(blacklist_characters="\x00"), max_size=300),
    st.builds("/".join, st.lists(st.sampled_from(["", "..", ".", "a", "x.jpg", "é"]), max_size=8)),
    st.builds(lambda n, ext: "../" * n + "x" + ext, st.integers(0, 6), st.sampled_from([".jpg", ".png", "", ".JPG"])),
    st.builds(lambda n: "a" * n + ".jpg", st.integers(200, 600)),
    st.sampled_from(["", ".", "..", "\r", "a\rb.jpg", "C:\\photos\\x.jpg", "~", "-rf", "con", "…/🐋.jpg"]),
)
MAX_NAME = len(".jpg") + STEM_CHARS + 1 + 16


@contextlib.contextmanager
def tmpfs(directory: Path, size: str):
    """A small real file system, where root may mount one; else the test is skipped."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def test_safe_names_never_leave_their_folder(tmp_path):
    @settings(max_examples=300, deadline=None)
    @given(HOSTILE)
    def check(name):
        out = safe_name(name, ".jpg")
        assert "/" not in out and "\\" not in out and out not in (".", "..") and not out.startswith(".")
        assert len(out.encode()) <= MAX_NAME
        path = tmp_path / out
        path.write_bytes(b"x")  # a legal file name on this file system
        assert inside(path, tmp_path) and path.resolve().parent == tmp_path.resolve()
        path.unlink()

    check()


@settings(max_examples=300, deadline=None)
@given(st.lists(HOSTILE, unique=True, min_size=2, max_size=20))
def test_distinct_names_never_share_an_output(names):
    outs = [safe_name(n, ".png") for n in names]
    assert len({o.lower() for o in outs}) == len(names)  # not even on a case-insensitive disk


def test_safe_names_are_readable_and_keep_the_extension():
    assert safe_name("b.jpg", ".jpg").startswith("b_jpg-")
    assert safe_name("b.jpg", ".jpg") != safe_name("b.png", ".jpg")
    assert safe_name("../../../x.jpg", ".jpg").startswith("x_jpg-")
    assert safe_name("sub/dir/fin 7.JPG").startswith("sub_dir_fin_7_JPG-")
    long = "a" * 240 + ".jpg"
    assert safe_name(long, ".jpg") == "a" * (STEM_CHARS - 4) + "_jpg-" + safe_name(long)[-16:] + ".jpg"
    assert safe_name("b.jpg") == safe_name("b.jpg")  # stable across runs: caches are found again
    with pytest.raises(ValueError):
        safe_name("x", "/../.jpg")


def test_atomic_path_replaces_whole_or_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temp file left
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_a_long_legal_target_name_gets_a_short_temp_name(tmp_path):
    target = tmp_path / ("n" * 240 + ".csv")  # 244 bytes: legal; the old ".<name>.XXXX.tmp" was not
    seen = []
    with atomic_path(target) as tmp:
        seen.append(tmp.name)
        tmp.write_text("ok")
    assert target.read_text() == "ok"
    assert len(seen[0]) < 40 and seen[0].startswith(f".wid{os.getpid()}.")


def test_disk_full_on_a_real_tmpfs_leaves_no_half_file(tmp_path):
    with tmpfs(tmp_path / "small", "256k") as small:
        (small / "kept.bin").write_bytes(b"k" * 1000)
        with pytest.raises(UserError, match=r"^disk full while writing .*big\.bin: free space and re-run$") as caught:
            with atomic_path(small / "big.bin") as tmp:
                tmp.write_bytes(os.urandom(1 << 20))
        assert caught.value.__cause__.errno == errno.ENOSPC
        assert sorted(p.name for p in small.iterdir()) == ["kept.bin"]  # no big.bin, no temp file
        assert (small / "kept.bin").read_bytes() == b"k" * 1000
        with atomic_path(small / "small.txt") as tmp:  # room again once the half-written temp file is gone
            tmp.write_text("fits")
        assert (small / "small.txt").read_text() == "fits"


@pytest.mark.parametrize("code", sorted(files.DISK_FULL))
def test_disk_full_errnos_become_one_line(tmp_path, code):
    def full(*_):
        raise OSError(code, os.strerror(code))

    with pytest.raises(UserError, match="disk full while writing"):
        with atomic_path(tmp_path / "x.csv") as tmp:
            with open(tmp, "w") as f:
                f.write("a")
                full()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError, match="Permission"):  # other errors stay what they are
        with atomic_path(tmp_path / "y.csv"):
            raise PermissionError(errno.EACCES, "Permission denied")


def test_stale_temp_files_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    writer = (
        "import sys, time\nfrom whaleid.files import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n    print(tmp, flush=True)\n    time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    killed = subprocess.Popen(
        [sys.executable, "-c", writer, str(folder / "a.csv")], stdout=subprocess.PIPE, text=True, env=env
    )
    dead_tmp = Path(killed.stdout.readline().strip())
    os.kill(killed.pid, signal.SIGKILL)  # kill -9: no clean-up code runs
    killed.wait()
    killed.stdout.close()
    assert dead_tmp.exists() and dead_tmp.stat().st_size == 0
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_tmp = folder / f".wid{live.pid}.abcd1234.tmp"
        live_tmp.write_bytes(b"in progress")
        other = folder / ".notes.tmp"  # not ours: never touched
        other.write_text("x")
        with atomic_path(folder / "b.csv") as tmp:
            tmp.write_text("b")
        assert not dead_tmp.exists()
        assert live_tmp.read_bytes() == b"in progress" and other.exists()
        assert sorted(p.name for p in folder.iterdir()) == sorted(["b.csv", live_tmp.name, other.name])
    finally:
        live.kill()
        live.wait()


def test_inside():
    with tempfile.TemporaryDirectory() as d:
        assert inside(Path(d) / "masks" / "a.png", d)
        assert not inside(Path(d) / ".." / "a.png", d)
        assert not inside("/etc/passwd", d)


def test_read_table_keeps_cells_as_written_and_names_what_is_wrong(tmp_path):
    """The one CSV reader: strings kept (``NA`` is not missing), header lowercased, problems named."""
    path = tmp_path / "t.csv"
    path.write_text("Image,Box\na.jpg,NA\n\nb.jpg,\n")
    table, lines = files.read_table_lines(path, ["image"], what="box CSV")
    assert table.columns.tolist() == ["image", "box"] and table["box"].iloc[0] == "NA"
    assert table["box"].isna().tolist() == [False, True] and lines.tolist() == [2, 4]
    with pytest.raises(UserError, match=r"t\.csv: missing required column\(s\) x0; found columns: image, box"):
        files.read_table(path, ["x0"])
    path.write_text("image,image\na,b\n")
    with pytest.raises(UserError, match=r"column\(s\) appear twice: image"):
        files.read_table(path)
    with pytest.raises(UserError, match="box CSV not found"):
        files.read_table(tmp_path / "absent.csv", what="box CSV")
