"""Files the commands write for the user (plots, CSV and JSON next to them): whole or not at all.

A full disk (ENOSPC, a quota, a file-size limit) or a read-only folder is one line naming the
file, and no half-written file is left behind: each file is written to a temporary name beside
it and renamed into place. Torch-free, so `nnopt compare` can use it.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import sys
from pathlib import Path

from nnopt_cli.errors import NnoptError

# errno values that mean "no room to write": a full disk, a quota, RLIMIT_FSIZE
OUT_OF_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


class OutputWriteError(NnoptError):
    """A file a command writes could not be written; the message is one line."""

    exit_code = 1


def out_of_space(e: BaseException | None) -> bool:
    """Whether `e`, or an error it was raised from, says the disk (or a quota) is full."""
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, OSError) and getattr(e, "errno", None) in OUT_OF_SPACE:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def replace_file(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: a temporary file beside it, fsynced, then renamed. On any failure
    the temporary file is removed, `path` is left as it was, and the error is raised as it came.
    The one core of every atomic write in nnopt (run-folder files too: store/folder.py)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (replace_file); OutputWriteError on failure, with the temporary
    file removed and any earlier `path` left as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, data)
    except OSError as e:
        raise OutputWriteError(f"cannot write {path}: {e.strerror or e}") from None


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """A matplotlib figure as PNG at `path`; a failed write leaves nothing."""
    write_bytes(path, figure_png(fig, dpi))



def figure_png(fig, dpi: int = 120) -> bytes:
    """A matplotlib figure rendered to PNG in memory (so a failed write leaves no half a file)."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    return buf.getvalue()


def csv_text(rows) -> str:
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def write_files(folder: Path, files: dict[str, bytes | str]) -> None:
    """Write several files of one result into `folder`, all or none: if one cannot be written,
    the ones this call wrote before it are removed again."""
    done: list[Path] = []
    try:
        for name, data in files.items():
            path = Path(folder) / name
            write_bytes(path, data.encode() if isinstance(data, str) else data)
            done.append(path)
    except BaseException:
        for path in done:
            try:
                path.unlink()
            except OSError:
                pass
        raise


def write_stdout(text: str) -> None:
    """Print `text` to stdout with every byte checked: Python's buffered stdout can drop the rest of
    a short write without an error (`nnopt compare > file` on a full disk would leave a cut table
    and exit 0); here a full disk is an OSError."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    view = memoryview(text.encode(sys.stdout.encoding or "utf-8", errors="replace"))
    while view:
        view = view[os.write(fd, view):]
