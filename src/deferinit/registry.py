"""Backend name -> ``"module:attr"`` of its compiled-model class. Nothing is imported until asked.

Built-in backends come first, then any registered by other packages through the ``deferinit.backends``
entry-point group (value ``"package.module:ModelClass"``, a :class:`~deferinit.adapters.compiled.CompiledModel`
subclass). Whether a backend is installed is found with ``importlib.util.find_spec``, which locates a
package without importing it, so listing backends never pays a framework's import cost.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from .errors import BackendUnavailableError, UnknownBackendError

__all__ = ["backends", "available_backends", "framework_backends", "framework_modules", "resolve", "load_backend",
           "compile", "BUILTINS", "ALIASES"]

#: THE list of built-in backends, one line each, in the order reports and tables show them: name -> (class path,
#: packages that must be importable, pip extra, other names users type). The noxfile, the test selection, the
#: parity matrix, the CLI and the benchmarks read it; what a backend's virtualenv needs is in the first lines of
#: its backends/<name>.txt (``# env: shared|own``, ``# python: ...``).
BUILTINS: dict[str, tuple[str, tuple[str, ...], str, tuple[str, ...]]] = {
    "numpy": ("deferinit.adapters.numpy:NumpyModel", ("numpy",), "", ("reference", "np")),
    "torch": ("deferinit.adapters.torch:TorchModel", ("torch",), "torch", ("pytorch",)),
    "tensorflow": ("deferinit.adapters.tensorflow:KerasModel", ("tensorflow", "keras"), "tensorflow", ("tf", "keras")),
    "jax": ("deferinit.adapters.jax:FlaxModel", ("jax", "flax"), "jax", ("flax",)),
    "nnx": ("deferinit.adapters.nnx:NnxModel", ("jax", "flax"), "jax", ("flax.nnx",)),
    "mxnet": ("deferinit.adapters.mxnet:GluonModel", ("mxnet",), "mxnet", ("gluon",)),
}
#: alias -> backend name
ALIASES = {alias: name for name, (*_, aliases) in BUILTINS.items() for alias in aliases}
#: the framework-free reference: every other built-in compiles through a deep-learning framework
REFERENCE = "numpy"
GROUP = "deferinit.backends"


def _entry_points() -> dict[str, str]:
    from importlib import metadata  # 20 ms to import: only when plugins are looked for

    try:
        eps = metadata.entry_points(group=GROUP)
    except Exception:  # a broken distribution's metadata must not break listing the built-ins
        return {}
    return {ep.name: ep.value for ep in eps if ep.name not in BUILTINS}


def backends() -> list[str]:
    """Every registered backend name: the built-ins (in :data:`BUILTINS` order), then plugins."""
    return list(BUILTINS) + sorted(_entry_points())


def framework_backends() -> list[str]:
    """The built-in backends that run a deep-learning framework (all but the NumPy reference), in table order."""
    return [name for name in BUILTINS if name != REFERENCE]


def framework_modules() -> list[str]:
    """Top-level modules of every built-in framework (``torch``, ``keras``...): for checks that none was imported."""
    return [pkg for name in framework_backends() for pkg in BUILTINS[name][1]]


def _installed(packages: tuple[str, ...]) -> bool:
    try:
        return all(importlib.util.find_spec(p) is not None for p in packages)
    except (ImportError, ValueError):
        return False


def available_backends() -> list[str]:
    """The registered backends whose frameworks are installed (found without importing them)."""
    names = [name for name, (_, pkgs, *_) in BUILTINS.items() if _installed(pkgs)]
    for name, value in sorted(_entry_points().items()):
        if _installed((value.split(":")[0].split(".")[0],)):
            names.append(name)
    return names


def resolve(name: Any) -> str:
    """The canonical backend name for ``name`` (aliases included), or UnknownBackendError."""
    if not isinstance(name, str):
        raise UnknownBackendError(f"backend: expected a name such as 'torch', received {type(name).__name__} {name!r}")
    key = ALIASES.get(name.lower(), name.lower())
    if key in BUILTINS or key in _entry_points():
        return key
    raise UnknownBackendError(f"backend: expected one of {', '.join(backends())} (or an alias: "
                              f"{', '.join(ALIASES)}), received {name!r}")


def load_backend(name: Any) -> type:
    """The compiled-model class of a backend, importing its framework now."""
    key = resolve(name)
    if key in BUILTINS:
        target, packages, extra, _ = BUILTINS[key]
    else:
        target, packages, extra = _entry_points()[key], (), ""
    hint = f"pip install 'deferinit[{extra}]' (or: pip install -r backends/{key}.txt)" if extra else ""
    missing = [p for p in packages if not _installed((p,))]
    if missing:
        raise BackendUnavailableError(f"backend {key}: expected {', '.join(missing)} to be installed, received "
                                      f"ImportError (not found); install it with {hint}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls: type = getattr(module, attr)
        return cls
    except BackendUnavailableError:
        raise
    except (ImportError, AttributeError, OSError, RuntimeError) as exc:  # installed but broken (e.g. numpy too new)
        raise BackendUnavailableError(f"backend {key}: installed but cannot be imported "
                                      f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                      f"reinstall with {hint or 'its package'}") from exc


def compile(spec: Any, backend: str = "numpy") -> Any:
    """Compile ``spec`` for ``backend``; returns a compiled model with ``apply_init``, ``__call__`` and
    ``native``. Compilation builds the framework's lazy modules; no parameter has a shape until apply_init."""
    from .spec import LazyModel

    if not isinstance(spec, LazyModel):
        from .errors import SpecError

        raise SpecError(f"compile: expected a deferinit.LazyModel, received {type(spec).__name__}")
    cls = load_backend(backend)
    if hasattr(spec, "nodes"):  # a graph spec (deferinit.graph): the backend's graph model, where it has one
        from .adapters.graph_models import graph_model_class

        return graph_model_class(cls, backend)(spec)
    return cls(spec)
