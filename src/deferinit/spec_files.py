"""Reading spec files, which may come from anyone: bounded before anything is parsed or walked.

A spec file is a regular file (FIFOs, devices such as ``/dev/zero``, directories and sockets are refused before
they are opened for reading; links are followed) of at most :data:`MAX_SPEC_BYTES`. YAML is read with PyYAML's
pure-Python safe loader (plain data, never objects or code), with at most :data:`MAX_YAML_ALIASES` aliases, and
no parsed spec may stand for more than :data:`MAX_SPEC_VALUES` values once aliases are expanded (a few hundred
bytes of aliases of aliases stand for billions) or contain itself. Nesting beyond what the parsers can recurse
through, and integers Python will not read (over 4300 digits), are a :class:`SpecError` too. Each limit is a
module constant, read at every call, so a program may change it.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Mapping

from .errors import BackendUnavailableError, SpecError
from .spec import MAX_DEPTH

__all__ = ["read_spec_data", "check_expansion", "MAX_SPEC_BYTES", "MAX_SPEC_VALUES", "MAX_YAML_ALIASES"]

#: spec files larger than this are refused before they are parsed (the zoo's largest, GoogLeNet, is 17 KB)
MAX_SPEC_BYTES = 4 * 2**20
#: values (numbers, strings, lists, mappings) a parsed spec may stand for, YAML aliases expanded
MAX_SPEC_VALUES = 1_000_000
#: YAML aliases (``*name``, merge keys ``<<: *name`` included) a spec file may use
MAX_YAML_ALIASES = 64


def _yaml_loader(yaml: Any, path: Path) -> type:
    class Loader(yaml.SafeLoader):  # type: ignore[misc]  # pure-Python safe loader (yaml is Any under mypy), counting aliases
        aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    mark = self.peek_event().start_mark
                    raise SpecError(f"{path}:{mark.line + 1}:{mark.column + 1}: expected at most {MAX_YAML_ALIASES} "
                                    f"YAML aliases (deferinit.spec_files.MAX_YAML_ALIASES), received more; write the "
                                    f"layers out, or tie one layer object with {{ref: <path>}}")
            return super().compose_node(parent, index)

    return Loader


def _parse(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    kind = {".json": "JSON", ".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}.get(suffix)
    if kind is None:
        raise SpecError(f"{path}: expected a .json, .toml or .yaml spec file, received suffix {suffix or '(none)'!r}")
    try:
        if kind == "JSON":
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise SpecError(f"{path}:{exc.lineno}:{exc.colno}: expected valid JSON, received an error: "
                                f"{exc.msg}") from None
        if kind == "TOML":
            import tomllib

            try:
                return tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise SpecError(f"{path}: expected valid TOML, received an error: {exc}") from None
        try:
            import yaml
        except ImportError:
            raise BackendUnavailableError(f"{path}: reading YAML spec files needs PyYAML; install it with "
                                          f"pip install 'deferinit[yaml]'") from None
        try:
            return yaml.load(text, Loader=_yaml_loader(yaml, path))  # safe: plain data, never objects or code
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            pos = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
            raise SpecError(f"{path}{pos}: expected valid YAML, received an error: "
                            f"{getattr(exc, 'problem', None) or exc}") from None
    except SpecError:
        raise
    except RecursionError:
        raise SpecError(f"{path}: expected {kind} nested at most a few hundred levels deep (a spec's containers nest "
                        f"at most {MAX_DEPTH} deep), received deeper nesting") from None
    except ValueError as exc:  # int() refuses numbers of more than 4300 digits
        raise SpecError(f"{path}: expected valid {kind}, received a value that cannot be read: {exc}") from None


def check_expansion(data: Any, where: str) -> None:
    """Refuse data that stands for more than MAX_SPEC_VALUES values once its shared parts (YAML aliases, or
    one dict used twice in Python) are expanded, or that contains itself (``&a [*a]``): walking either would
    never end. Linear in the data itself."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[Any, bool]] = [(data, False)] if isinstance(data, (list, Mapping)) else []
    while stack:
        obj, done = stack.pop()
        kids = [*obj.values(), *obj] if isinstance(obj, Mapping) else obj
        if done:
            open_.discard(id(obj))
            size[id(obj)] = 1 + sum(size.get(id(k), 1) for k in kids)
            if size[id(obj)] > MAX_SPEC_VALUES:
                raise SpecError(f"{where}: expected at most {MAX_SPEC_VALUES:,} values (deferinit.spec_files."
                                f"MAX_SPEC_VALUES), received more once shared parts (YAML aliases) are expanded")
            continue
        if id(obj) in size:
            continue
        open_.add(id(obj))
        stack.append((obj, True))
        for k in kids:
            if isinstance(k, (list, Mapping)):
                if id(k) in open_:
                    raise SpecError(f"{where}: expected plain data, received a collection that contains itself "
                                    f"(a YAML alias inside its own anchor): it would repeat forever")
                stack.append((k, False))


def _regular(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                else "a character device" if stat.S_ISCHR(st.st_mode) else "a block device" if stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise SpecError(f"{path}: expected a regular spec file, received {kind}")
    if st.st_size > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: expected a spec file of at most {MAX_SPEC_BYTES:,} bytes (deferinit.spec_files."
                        f"MAX_SPEC_BYTES), received {st.st_size:,} bytes")


def _read(path: Path) -> bytes:
    """At most MAX_SPEC_BYTES of a regular file; FIFOs, devices (``/dev/zero``) and directories are refused
    before anything is read, links included (they are followed)."""
    try:
        _regular(path, os.stat(path))
        # O_NONBLOCK: a FIFO put in its place since the stat must not block the open (the fstat refuses it)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as fh:
            _regular(path, os.fstat(fh.fileno()))
            raw = fh.read(MAX_SPEC_BYTES + 1)  # /proc files say 0 bytes: the read is bounded itself
    except OSError as exc:
        raise SpecError(f"{path}: expected a readable spec file, received an error: {exc.strerror or exc}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: expected a spec file of at most {MAX_SPEC_BYTES:,} bytes (deferinit.spec_files."
                        f"MAX_SPEC_BYTES), received more")
    return raw


def read_spec_data(path: Path) -> Any:
    """The parsed data of a spec file, within the limits above (:func:`check_expansion` is for the reader of
    the data: ``model_from_dict`` calls it)."""
    raw = _read(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: expected UTF-8 text, received undecodable bytes at position {exc.start}") from None
    return _parse(path, text)
