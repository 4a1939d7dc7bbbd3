"""``deferinit`` on the command line.

    deferinit shapes SPEC --input 2,20 [--backend NAME] [--concrete] [--dtype D] [--depth N] [--json]
    deferinit shapes --python MODULE:ATTR --input 2,20
    deferinit backends
    deferinit --version

SPEC is a spec file (``.json``, ``.toml``, ``.yaml``): data, never code. A path that exists is read as a file
whatever its name (``evil:spec.json`` included); Python code is imported only when asked for explicitly with
``--python module:attr`` or ``--python path/to/file.py:attr``.

Exit status: 0 on success; 2 for a usage error (argparse's usage and ``deferinit <command>: error: ...``) or a
deferinit error (one line ``deferinit: error: <Class>: <message>``, no traceback); 130 on Ctrl-C; 141 when the
reader of stdout went away (``| head``), silently, as a command killed by SIGPIPE reports itself in a shell;
70 (EX_SOFTWARE) for an internal bug, whose line says so (``DEFERINIT_TRACEBACK=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .errors import DeferInitError, DTypeError, SpecError

if TYPE_CHECKING:
    from .spec import Shape

__all__ = ["main", "resolve_spec", "parse_shape", "add_spec_arguments", "spec_from_args", "shape_arg"]

EXIT_USAGE = 2
EXIT_INTERNAL = 70  # sysexits.h EX_SOFTWARE
EXIT_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head -1`'s yes
_PYTHON_REF = re.compile(r"^(?:[A-Za-z_][\w.]*|.+\.py):[A-Za-z_][\w.]*$")


def parse_shape(text: str) -> Shape:
    """``"2,20"`` -> ``(2, 20)``; ``None`` or ``?`` marks a dim that varies. The values are not checked here:
    the shape rules refuse a negative or zero dim with the same message as everywhere else."""
    dims: list[int | None] = []
    for part in str(text).replace("x", ",").split(","):
        part = part.strip()
        if part in ("None", "none", "?", "_"):
            dims.append(None)
            continue
        try:
            value = int(part)
        except ValueError:
            raise SpecError(f"--input: expected comma-separated sizes such as 2,20, received {text!r}") from None
        dims.append(value)
    return tuple(dims)


def shape_arg(text: str) -> Shape:
    """:func:`parse_shape` as an argparse ``type``: a bad shape is a usage error."""
    try:
        return parse_shape(text)
    except SpecError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes such as 2,20 (None for a varying dim), "
                                         f"received {text!r}") from None


def _depth_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}")
    return value


def _load_attr(module: Any, attr: str, where: str) -> Any:
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise SpecError(f"{where}: expected an attribute {attr!r}, received a module without it") from None
    return obj() if callable(obj) and not hasattr(obj, "to_dict") else obj


def _import_python(text: str) -> Any:
    head, sep, attr = text.rpartition(":")
    if not sep or not head or not attr:
        raise SpecError(f"--python: expected module:attr or path/to/file.py:attr, received {text!r}")
    try:
        if head.endswith(".py"):
            file = Path(head)
            if not file.is_file():
                raise SpecError(f"{head}: expected a Python file, received a path that does not exist")
            loader_spec = importlib.util.spec_from_file_location(f"_deferinit_user_{file.stem}", file)
            module = importlib.util.module_from_spec(loader_spec)  # type: ignore[arg-type]
            loader_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(head)
    except DeferInitError:
        raise
    except Exception as exc:  # the user's module failed to import: say so in one line
        raise SpecError(f"{head}: importing it failed ({type(exc).__name__}: {exc})") from None
    return _load_attr(module, attr, text)


def resolve_spec(text: str, *, python: bool = False) -> Any:
    """A LazyModel from a spec file; with ``python=True`` from ``module:attr`` or ``file.py:attr`` instead
    (a zero-argument callable is called). Without ``python=True`` nothing is ever imported or executed: a
    name that looks like ``module:attr`` and is not a file is refused with how to ask for Python."""
    from .serialize import load_spec
    from .spec import LazyModel

    if not python:
        if not Path(text).exists() and _PYTHON_REF.match(text):
            raise SpecError(f"{text}: expected a spec file, received a path that does not exist (Python code is "
                            f"imported only when asked for explicitly: --python {text})")
        return load_spec(text)
    spec = _import_python(text)
    if not isinstance(spec, LazyModel):
        raise SpecError(f"{text}: expected a deferinit.LazyModel, received {type(spec).__name__}")
    return spec


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """SPEC (a file) or ``--python MODULE:ATTR``, exactly one; read back with :func:`spec_from_args`."""
    parser.add_argument("spec", nargs="?", metavar="SPEC",
                        help="spec file (.json/.toml/.yaml), read as data; a path that exists is always a file")
    parser.add_argument("--python", metavar="MODULE:ATTR",
                        help="instead of SPEC, import Python code and take its LazyModel: module:attr or "
                             "path/to/file.py:attr (runs that code)")
    parser.set_defaults(parser=parser)


def spec_from_args(args: argparse.Namespace) -> Any:
    if args.spec is not None and args.python is not None:
        args.parser.error("expected a SPEC file or --python MODULE:ATTR, received both")
    if args.spec is None and args.python is None:
        args.parser.error("expected a SPEC file (or --python MODULE:ATTR)")
    return resolve_spec(args.python, python=True) if args.python is not None else resolve_spec(args.spec)


def _dtype_hint(spec: Any, shape: Shape, dtype: str) -> str:
    """What --dtype would work, when the one given is of the wrong kind (token ids given as floats, say)."""
    import numpy as np

    from .shapes import infer_shapes

    try:
        other = "float32" if np.dtype(dtype).kind in "iub" else "int64"
        infer_shapes(spec, shape, dtype=other)
    except Exception:  # no kind fits either: the error as it is says enough
        return ""
    return f"; this spec takes {other} input: pass --dtype {other}"


def _shapes(args: argparse.Namespace) -> int:
    from .adapters.compiled import ShapeDtype
    from .registry import compile, resolve
    from .shapes import infer_shapes

    if args.json and args.depth is not None:
        args.parser.error("--depth applies to the table; --json always holds every layer")
    spec = spec_from_args(args)
    backend = resolve(args.backend)
    try:  # the reference walk first: every mistake is reported before any framework code runs
        # no --dtype: infer_shapes's own default, the spec's own dtype (int64 for token ids)
        reference = (infer_shapes(spec, args.input) if args.dtype is None
                     else infer_shapes(spec, args.input, dtype=args.dtype))
    except DTypeError as exc:
        hint = _dtype_hint(spec, args.input, args.dtype) if args.dtype is not None else ""
        if not hint:
            raise
        raise DTypeError(f"{exc}{hint}") from None
    if backend == "numpy" and not args.concrete:
        report = reference
    else:
        # abstract by default: shapes need no weights, and None dims stay None where the framework can trace them
        model = compile(spec, backend)
        report = model.apply_init(ShapeDtype(args.input, reference.input_dtype), init="zeros", key=0,
                                  abstract=not args.concrete)
    print(report.to_json() if args.json else report.table(depth=args.depth))
    return 0


def _backends(args: argparse.Namespace) -> int:
    from .registry import available_backends, backends

    have = set(available_backends())
    for name in backends():
        print(f"{name:12s} {'installed' if name in have else 'not installed'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="deferinit", description="One model spec, lazily initialized by four "
                                                                   "frameworks.")
    parser.add_argument("--version", action="version", version=f"deferinit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shapes = sub.add_parser("shapes", help="print the shape report of a spec for an input shape")
    add_spec_arguments(shapes)
    shapes.add_argument("--input", required=True, type=shape_arg, metavar="SHAPE",
                        help="input shape, e.g. 2,20 or 1,1,28,28 (None for a varying dim)")
    from .registry import BUILTINS, REFERENCE

    shapes.add_argument("--backend", default=REFERENCE, help=f"{REFERENCE} (default, framework-free) or one of "
                                                             f"{', '.join(n for n in BUILTINS if n != REFERENCE)}")
    shapes.add_argument("--concrete", action="store_true",
                        help="let the framework allocate and initialize real weights (default: shapes only, "
                             "abstract init, no parameter memory)")
    shapes.add_argument("--dtype", default=None, help="input dtype (default: the spec's own, int64 when the first "
                                                      "layer takes token ids, else float32)")
    shapes.add_argument("--depth", type=_depth_arg, default=None, metavar="N",
                        help="show layers nested at most N deep (deeper parameters are summed into their parent)")
    shapes.add_argument("--json", action="store_true", help="print the report as JSON")
    shapes.set_defaults(run=_shapes)
    listing = sub.add_parser("backends", help="list backends and whether each is installed")
    listing.set_defaults(run=_backends)
    try:
        from .parity_cli import add_parity_commands
    except ImportError:  # pragma: no cover - parity commands live beside the parity module
        pass
    else:
        add_parity_commands(sub)
    return parser


def _join_negative(argv: Sequence[str]) -> list[str]:
    """``--input -1,2`` as ``--input=-1,2``: argparse takes a value starting with '-' for an option unless it
    is a plain negative number, so the shape would never reach the shape check that explains what is wrong."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            return out + list(argv[i:])
        if tok == "--input" and i + 1 < len(argv) and re.match(r"-\d", argv[i + 1]):
            out.append(f"--input={argv[i + 1]}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def _quiet_stdout() -> None:
    # CPython's advice for SIGPIPE: point stdout at devnull so the flush at exit cannot fail a second time
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a captured stdout)
        pass


def _say(line: str) -> None:
    try:
        print(line.replace("\n", " "), file=sys.stderr)
    except OSError:  # stderr is gone too: the exit status is all that is left
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(_join_negative(sys.argv[1:] if argv is None else argv))
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handlers, not at interpreter exit
        return code
    except SystemExit as exc:  # argparse: --help, --version and usage errors (already printed, with usage)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_PIPE
    except DeferInitError as exc:
        _say(f"deferinit: error: {type(exc).__name__}: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("deferinit: interrupted")
        return 130
    except MemoryError as exc:  # the machine's limit, not a bug
        _say(f"deferinit: error: out of memory (MemoryError{': ' + _first_line(exc) if str(exc) else ''}); "
             f"shapes alone need none: leave out --concrete, or use smaller sizes")
        return EXIT_USAGE
    except OSError as exc:  # a file the user named: missing, a directory, no permission, a full disk
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        _say(f"deferinit: error: {where}{exc.strerror or _first_line(exc)}")
        return EXIT_USAGE
    except Exception as exc:  # a bug in deferinit: never a traceback unless asked for, but never mistaken for a user error
        if os.environ.get("DEFERINIT_TRACEBACK"):
            import traceback

            traceback.print_exc()
        _say(f"deferinit: internal error: {type(exc).__name__}: {_first_line(exc)} (a bug in deferinit: please "
             f"report it with the command line; DEFERINIT_TRACEBACK=1 shows the traceback)")
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
