"""JSONL files from strangers: bounded lines, exact error positions, no clobbered files.

The batch job (``batch.py``) reads a file written by someone else and writes
two of its own. What can go wrong, and what this module does about it:

* **A huge line** (a file with no newline at all) would be read into memory
  whole: :func:`read_lines` reads at most ``MAX_LINE_BYTES`` of a line and
  reports a longer one as too long, skipping the rest without holding it.
* **Error positions.** :func:`parse_object` reports JSON errors at the
  column (in characters, from 1) where the line's text has it -- the line's
  own newline is not part of the JSON, so an unfinished object is reported
  where it stops, not at "line 2 column 1" after its newline.
* **What Windows editors write**: a UTF-8 byte order mark at the start of the
  file, CRLF line ends. Both are accepted.
* **Files that are not what they claim to be.** Resuming reads the output
  back and cuts off a torn last line (a run killed mid-write). If the file
  was not written by us -- lines that are not our records, or a tail that
  is not the start of one -- :func:`read_keys` refuses instead of cutting,
  so ``--resume`` pointed at the wrong file loses nothing.
* **Two names for one file.** Writing the output over the input (or the
  errors over either) destroys it while it is read. :func:`refuse_same_file`
  compares files by device and inode, which sees through symlinks and hard
  links, before anything is opened for writing.
"""

from __future__ import annotations

import codecs
import json
import os
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

from . import validation

#: Longest input line read (bytes, newline excluded). A prompt must fit the
#: model's context (GPT-2: 1024 tokens, a few KiB of text); 1 MiB leaves room
#: for escapes and metadata while bounding memory at one chunk of lines.
MAX_LINE_BYTES = 1 << 20

#: Longest line of a file we wrote ourselves (results hold several completions).
MAX_RECORD_BYTES = 64 << 20

_JSON_KIND = {list: "an array", str: "a string", int: "a number", float: "a number"}


# ------------------------------------------------------------------ reading
def open_input(path: Path, argument: str = "input_path") -> BinaryIO:
    """``path`` opened for reading bytes (a bad UTF-8 line is one error, not a crash)."""
    try:
        return open(path, "rb")
    except OSError as error:
        raise type(error)(error.errno, f"cannot read {argument}={str(path)!r}: {error.strerror}") from error


def read_lines(source: BinaryIO, max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """``(line_number, raw_line)`` from 1; ``raw_line`` is None for a line over ``max_bytes``.

    The raw line keeps its ``\\n`` (absent on a last line without one). A
    too-long line is skipped in bounded pieces, never held whole.
    """
    number = 0
    while raw := source.readline(max_bytes + 1):
        number += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            while (rest := source.readline(1 << 16)) and not rest.endswith(b"\n"):
                pass
            raw = None
        yield number, raw


def count_lines(path: Path) -> int | None:
    """Lines in a regular file (for an ETA), or None for a pipe / FIFO."""
    if not path.is_file():
        return None
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


class _DuplicateKey(ValueError):
    pass


def _object_without_duplicates(pairs: list) -> dict:
    keys = set()
    for key, _ in pairs:
        if key in keys:
            raise _DuplicateKey(key)
        keys.add(key)
    return dict(pairs)


def parse_object(raw: bytes, first_line: bool = False) -> dict:
    """One JSONL line -> a dict; raises ``ValueError`` whose message is the reason.

    Args:
      raw: the line's bytes, newline (``\\n`` or ``\\r\\n``) included or not.
      first_line: the file's first line, where a UTF-8 byte order mark is skipped.

    Raises:
      ValueError: invalid UTF-8 (byte position from 1), invalid JSON (column
        in characters from 1), a key given twice, nesting too deep, an integer
        too long to convert, or a JSON value that is not an object.
    """
    if first_line and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"invalid UTF-8 at byte {error.start + 1} of the line") from None
    text = text.rstrip("\r\n")  # the line end is not part of the JSON (nor of its column count)
    try:
        data = json.loads(text, object_pairs_hook=_object_without_duplicates)
    except json.JSONDecodeError as error:
        message = error.msg.removesuffix(" at")  # "Invalid control character at"
        raise ValueError(f"invalid JSON: {message} at column {error.colno}") from None
    except _DuplicateKey as error:
        raise ValueError(f"invalid JSON object: key {error.args[0]!r} appears twice") from None
    except RecursionError:
        raise ValueError("invalid JSON: nested too deeply") from None
    except ValueError as error:  # an integer literal over Python's digit limit (the advice is for coders)
        raise ValueError(f"invalid JSON: {str(error).split(';')[0]}") from None
    if not isinstance(data, dict):
        kind = _JSON_KIND.get(type(data)) or json.dumps(data)  # true, false, null
        raise ValueError(f"expected a JSON object, got {kind}")
    return data


def read_keys(path: Path, argument: str, first_key: str) -> tuple[list, int]:
    """The ``first_key`` values of the records of a JSONL file we wrote, and where they end.

    Our records are JSON objects whose first key is ``first_key``. A run
    killed mid-write leaves a last line that is the START of such a record
    (torn): it is not counted, and the returned end is where it begins, for
    :func:`cut_to`.

    Returns:
      ``(values, end)``: ``first_key`` of every complete record, in file
      order, and the byte length of the file up to the end of the last one.

    Raises:
      ValueError: a line that is not one of our records, other than a torn
        last line: the file is someone else's.
    """
    signature = json.dumps({first_key: 0})[:len(first_key) + 5].encode()  # b'{"id": '
    values, end = [], 0
    with open(path, "rb") as f:
        for number, raw in read_lines(f, MAX_RECORD_BYTES):
            try:
                record = parse_object(raw) if raw is not None and raw.endswith(b"\n") else None
            except ValueError:
                record = None
            if record is None or first_key not in record or not raw.startswith(signature):
                if not _is_torn_tail(f, raw, signature):
                    validation.fail(argument, str(path), (
                        f"line {number} is not a record written by xladecode, so this is not our file: "
                        "refusing to change it; choose another path (or fix the file by hand)"))
                break
            values.append(record[first_key])
            end += len(raw)
    return values, end


def cut_to(path: Path, end: int) -> None:
    """Truncates ``path`` to ``end`` bytes if it is longer (cuts a torn last line)."""
    if path.is_file() and path.stat().st_size > end:
        os.truncate(path, end)


def _is_torn_tail(f: BinaryIO, raw: bytes | None, signature: bytes) -> bool:
    """Whether ``raw`` is the file's last line and could be the start of one of our records."""
    if raw is None or f.read(1):
        return False
    start = raw.rstrip(b"\r\n")
    return start.startswith(signature) or signature.startswith(start)


# ------------------------------------------------------------------ writing
def refuse_same_file(paths: dict[str, Path]) -> None:
    """Raises unless every named path is a different file (checked before any is opened for writing).

    Existing files compare by ``(st_dev, st_ino)``: symlinks and hard links to
    one file are the same file. Paths that do not exist yet compare by their
    resolved spelling (symlinked folders and dangling symlinks resolved).
    Devices and FIFOs (``/dev/null``, a pipe) may repeat: writing to them
    overwrites nothing.

    Args:
      paths: argument name -> path, e.g. ``{"input_path": ..., "output_path": ...}``.

    Raises:
      ValueError: two arguments name the same file.
      IsADirectoryError: a path is a directory.
    """
    seen: dict[tuple, str] = {}
    for argument, path in paths.items():
        identity = _file_identity(path)
        if identity is None:
            continue
        if identity[0] == "dir":
            raise IsADirectoryError(f"{argument}={str(path)!r} is a directory: give a file path")
        if identity in seen:
            other = seen[identity]
            validation.fail(argument, str(path), (
                f"is the same file as {other}={str(paths[other])!r} (same path, symlink or hard link); "
                "writing it would destroy what is read or written there: give distinct files"))
        seen[identity] = argument


def _file_identity(path: Path) -> tuple | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return ("new", os.path.normcase(os.path.realpath(path)))
    except OSError:
        return None  # unreadable metadata: opening the file reports it
    if stat.S_ISDIR(info.st_mode):
        return ("dir", info.st_dev, info.st_ino)
    if stat.S_ISREG(info.st_mode):
        return ("file", info.st_dev, info.st_ino)
    return None


def dumps(record: dict) -> str:
    """One JSONL line (with its newline); UTF-8 as is, ``\\uXXXX`` escapes only if it cannot be UTF-8."""
    text = json.dumps(record, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: the escaped spelling is still valid JSON
        text = json.dumps(record)
    return text + "\n"


def is_regular(file) -> bool:
    """Whether an open file is a regular file (``fsync`` fails on pipes and ttys)."""
    return stat.S_ISREG(os.fstat(file.fileno()).st_mode)
