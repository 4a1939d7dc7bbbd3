"""``deferinit`` on the command line.

    deferinit shapes SPEC --input 2,20 [--backend NAME] [--json]
    deferinit backends

SPEC is a spec file (``.json``, ``.toml``, ``.yaml``) or Python code named explicitly as ``module:attr`` or
``path/to/file.py:attr`` (the only form that imports user code). Errors print one line on stderr and exit
with status 2; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import DeferInitError, SpecError

__all__ = ["main", "resolve_spec", "parse_shape"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own usage errors: one line, status 2
        raise SpecError(f"usage: {message} (see deferinit --help)")


def parse_shape(text: str) -> tuple:
    """``"2,20"`` -> ``(2, 20)``; ``None`` or ``?`` marks a dim that varies."""
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


def _load_attr(module: Any, attr: str, where: str) -> Any:
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise SpecError(f"{where}: expected an attribute {attr!r}, received a module without it") from None
    return obj() if callable(obj) and not hasattr(obj, "to_dict") else obj


def resolve_spec(text: str) -> Any:
    """A LazyModel from a spec file, ``module:attr`` or ``file.py:attr`` (a zero-argument callable is called)."""
    from .serialize import load_spec
    from .spec import LazyModel

    path = Path(text)
    if path.suffix.lower() in (".json", ".toml", ".yaml", ".yml") and ":" not in path.name:
        return load_spec(path)
    head, sep, attr = text.rpartition(":")
    if not sep or not head or not attr:
        raise SpecError(f"SPEC: expected a .json/.toml/.yaml file, module:attr or file.py:attr, received {text!r}")
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
    spec = _load_attr(module, attr, text)
    if not isinstance(spec, LazyModel):
        raise SpecError(f"{text}: expected a deferinit.LazyModel, received {type(spec).__name__}")
    return spec


def _shapes(args: argparse.Namespace) -> int:
    from .registry import compile, resolve
    from .shapes import infer_shapes

    spec = resolve_spec(args.spec)
    shape = parse_shape(args.input)
    backend = resolve(args.backend)
    if backend == "numpy":
        report = infer_shapes(spec, shape, dtype=args.dtype)
    else:
        import numpy as np

        from .adapters.base import ShapeDtype

        model = compile(spec, backend)
        dummy: Any = ShapeDtype(tuple(1 if d is None else d for d in shape), args.dtype)
        if args.dtype.startswith("int"):
            dummy = np.zeros(dummy.shape, dtype=args.dtype)
        report = model.apply_init(dummy, init="zeros", key=0)
    print(report.to_json() if args.json else report)
    return 0


def _backends(args: argparse.Namespace) -> int:
    from .registry import available_backends, backends

    have = set(available_backends())
    for name in backends():
        print(f"{name:12s} {'installed' if name in have else 'not installed'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deferinit", description="One model spec, lazily initialized by four frameworks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    shapes = sub.add_parser("shapes", help="print the shape report of a spec for an input shape")
    shapes.add_argument("spec", help="spec file (.json/.toml/.yaml), module:attr or file.py:attr")
    shapes.add_argument("--input", required=True, help="input shape, e.g. 2,20 or 1,1,28,28 (None for a varying dim)")
    shapes.add_argument("--backend", default="numpy", help="numpy (default, framework-free), torch, tensorflow, "
                                                           "jax or mxnet")
    shapes.add_argument("--dtype", default="float32", help="input dtype (int64 for token ids)")
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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.run(args) or 0)
    except DeferInitError as exc:
        print(f"deferinit: error: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deferinit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback for a CLI user; the class and message say what happened
        print(f"deferinit: error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
