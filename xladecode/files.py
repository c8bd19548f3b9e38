"""Reading small files that come from strangers: regular files only, bounded, strict JSON.

A checkpoint folder is untrusted input. Three things can go wrong before any
content is even looked at, and each is closed here once for every reader
(``config.json``, ``generation_config.json``, the shard index, safetensors
headers, tokenizer files):

* a name can be a FIFO or a device (``/dev/zero``, a pipe nobody writes to):
  reading it hangs or never ends. :func:`open_regular` opens without blocking
  and refuses anything that is not a regular file (symlinks to regular files
  are fine: the Hugging Face cache is made of them);
* a file can be huge: :func:`read_bytes` refuses more than a stated limit
  before reading, so memory stays bounded by what we chose;
* JSON can be ambiguous or not what it looks like: :func:`parse_json_object`
  refuses duplicate keys (which one wins is parser-dependent), the
  non-standard ``NaN`` / ``Infinity`` constants, nesting deep enough to
  overflow the parser, and any top-level value that is not an object.

Every refusal is a ``ValueError`` (``FileNotFoundError`` for a missing file)
whose message starts with the file's path.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import BinaryIO

#: Largest JSON file we read (config.json, generation_config.json, the shard
#: index). Real ones are a few KB; an index for thousands of tensors is a
#: few hundred KB. Python's JSON objects take ~10x the text's size, so the
#: cap is also what bounds their memory.
MAX_JSON_BYTES = 16 << 20


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Opens ``path`` for binary reading if (after symlinks) it is a regular file.

    Raises:
      FileNotFoundError: no such file (a dangling symlink included).
      PermissionError: not readable (the message names the file).
      ValueError: a directory, FIFO, device or socket, a symlink loop, a name
        too long: the message names the path and what it is.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode  # follows symlinks, opens nothing
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path} is {_kind(mode)}, expected a regular file")
        # O_NONBLOCK: if the name was swapped for a FIFO since the stat, open()
        # still returns at once instead of waiting for a writer; fstat catches it.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        dangling = " (a symlink to a missing file)" if os.path.islink(path) else ""
        raise FileNotFoundError(f"{path}: no such file{dangling}") from None
    except PermissionError:
        raise
    except OSError as error:  # a symlink loop, a name too long, ...: the path is at fault
        raise ValueError(f"{path}: cannot be opened ({error.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ValueError(f"{path} is {_kind(mode)}, expected a regular file")
    return os.fdopen(fd, "rb")


def read_bytes(path: str | os.PathLike, limit: int) -> bytes:
    """The whole content of a regular file of at most ``limit`` bytes."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ValueError(f"{path} is {size} bytes, more than the {limit} bytes allowed for it")
        data = f.read(size + 1)  # +1: a file that grew since fstat is still caught
    if len(data) > limit:
        raise ValueError(f"{path} is more than the {limit} bytes allowed for it")
    return data


def _no_duplicate_keys(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {short_repr(key)} (which one counts is up to the parser)")
        result[key] = value
    return result


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON (only finite numbers are)")


def parse_json_object(text: bytes | str, where: str | os.PathLike) -> dict:
    """Parses strict JSON whose top level is an object.

    Args:
      text: UTF-8 bytes (no BOM) or str.
      where: the file (or file and part) named in errors.

    Raises:
      ValueError: ``"{where}: ..."`` for invalid UTF-8 or JSON, duplicate
        keys, NaN/Infinity, too deep nesting, or a non-object top level.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys,
                           parse_constant=_no_constants)
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply") from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{where}: not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a JSON object {{...}}, got {json_type(value)}")
    return value


def read_json_object(path: str | os.PathLike, limit: int = MAX_JSON_BYTES) -> dict:
    """Reads a JSON file that must hold one object (see :func:`parse_json_object`)."""
    return parse_json_object(read_bytes(path, limit), path)


def json_type(value) -> str:
    """How a JSON value's type reads in an error message: "a list", "null", ..."""
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
             str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def short_repr(value, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: names in hostile files can be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
