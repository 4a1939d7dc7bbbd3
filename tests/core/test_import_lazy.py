"""``import deferinit`` loads the spec core only (issue 17: < 50 ms with no framework imported); every public name
still resolves to the same object as before, loaded on first use.

Truth: ``sys.modules`` of a fresh interpreter, and the defining modules' own objects."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import deferinit as di

pytestmark = pytest.mark.installed  # 'import deferinit' must load no framework where frameworks are installed

_DEFERRED = ("deferinit.serialize", "deferinit.layers_seq", "deferinit.graph", "deferinit.shapes", "deferinit.report",
             "json", "difflib", "pathlib", "numpy")


def test_import_loads_only_the_spec_core() -> None:
    code = (f"import sys; import deferinit; print([m for m in {_DEFERRED!r} if m in sys.modules]); "
            f"deferinit.GRU; print([m for m in {_DEFERRED!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "[]", out
    assert out[1] == "['deferinit.layers_seq']", out  # one name loads its own module, nothing else


def test_every_public_name_is_the_defining_modules_object() -> None:
    owners = {"GRU": "layers_seq", "Input": "graph", "Add": "merges", "ShapeReport": "report", "load_spec": "serialize",
              "infer_shapes": "shapes", "Attend": "layers_graph", "Upsample2D": "layers_up", "SiLU": "layers_extra",
              "Dense": "layers", "LazyModel": "spec", "compile": "registry"}
    for name, module in owners.items():
        assert getattr(di, name) is getattr(importlib.import_module(f"deferinit.{module}"), name)
    for name in di.__all__:
        assert getattr(di, name) is not None, name
    assert di.shapes is importlib.import_module("deferinit.shapes")  # submodules stay reachable as attributes
    assert set(di.__all__) <= set(dir(di))


def test_a_fresh_process_loads_spec_files_naming_lazily_imported_layers() -> None:
    """A spec file naming layer types whose modules ``import deferinit`` leaves unloaded (Conv2DTranspose, ReLU6,
    GroupNorm...) loads in a fresh process: the parity session's compare step failed on U-Net's artifact."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import sys, deferinit as di\n"
            f"m = di.load_spec({str(root / 'examples' / 'zoo' / 'unet.json')!r})\n"
            f"e = di.load_spec({str(root / 'examples' / 'zoo' / 'mobilenet_v2.json')!r})\n"
            "print(type(m).__name__, type(e).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["LazyModel", "LazyModel"]
