"""Parity artifacts written and read as plain ``.npz``: one file per backend and spec.

An artifact made from a reference artifact (``source=``) runs on its input and weights. The reference's file
does not hold those weights when they are a portable initializer's draw (``xavier_uniform``...): they are a
function of the spec, input, initializer name and key its header holds, and its header holds each one's sha256.
A backend whose own portable draw has those digests runs on its own draw (the same bits); otherwise, and
wherever the weights themselves are needed (the finite differences), they are drawn again by the numpy
reference on first use and checked bit for bit against the digests, so nothing silently depends on random
streams agreeing across NumPy versions or virtualenvs: a draw that differs is a :class:`WeightsError` naming
the parameter. Other weights (a framework's own initializer, a custom one) are stored. A framework's file keeps
a fixed sample of each big intermediate output and the branches its forward took (see :func:`save_artifact`).
The parity matrix's artifacts went from 3.7 to 1.0 GB (clean-clone runs of ``nox``).

Reading one checks its header field by field: artifacts travel between machines and virtualenvs, so a damaged
or foreign one is a :class:`WeightsError` naming the file and the field, never a ``KeyError`` later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from .errors import DTypeError, SpecError, WeightsError
from .parity_artifacts import INTER_SAMPLE, Artifact, _digest, _portable_name, _sample
from .report import ShapeReport

__all__ = ["save_artifact", "load_artifact", "redraw_weights", "FORMAT"]

FORMAT = "deferinit.parity"


class _Redrawn(Mapping[str, np.ndarray]):
    """A reference artifact's weights that its file did not store: names and order from its digests (no draw);
    the values drawn on first use by the numpy reference's portable initializer from the artifact's spec,
    input, initializer and key, and checked bit for bit against the digests."""

    def __init__(self, where: str, spec: dict[str, Any], x: Any, init: str, key: int, digests: dict[str, str]) -> None:
        self._where, self._spec, self._x, self._init, self._key = where, spec, x, init, key
        self._digests = digests
        self._values: dict[str, np.ndarray] | None = None

    def _drawn(self) -> dict[str, np.ndarray]:
        if self._values is None:
            self._values = redraw_weights(self._spec, self._x, self._init, self._key, self._digests, self._where)
        return self._values

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._digests:
            raise KeyError(name)
        return self._drawn()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._digests)

    def __len__(self) -> int:
        return len(self._digests)


def redraw_weights(spec: dict[str, Any], x: Any, init: str, key: int, digests: dict[str, str],
                   where: str = "parity") -> dict[str, np.ndarray]:
    """The weights the numpy reference's ``apply_init(x, init=init, key=key)`` draws for ``spec`` (a spec dict),
    checked against ``digests`` (name -> sha256, in order): a :class:`WeightsError` names the first that differs."""
    from .registry import compile
    from .spec import LazyModel

    model = compile(LazyModel.from_dict(spec), "numpy")
    model.apply_init(x, init=init, key=key)
    weights: dict[str, np.ndarray] = model.export_weights()
    drawn = f"drawing them again here ({init!r}, key {key}, numpy {np.__version__})"
    if list(weights) != list(digests):
        raise WeightsError(f"{where}: the weights were not stored, and {drawn} gave the parameters "
                           f"{', '.join(list(weights)[:8])}, not the header's {', '.join(list(digests)[:8])}")
    for name, arr in weights.items():
        if _digest(arr) != digests[name]:
            raise WeightsError(f"{where}: the weights were not stored, and {drawn} gave other values for '{name}' "
                               f"than the header's sha256; write the reference with save_artifact(..., weights=True)")
    return weights


def _pack(arrays: dict[str, np.ndarray], key: str, value: Any) -> int:
    """An array under ``key``, or a tuple under ``key/0``, ``key/1``...; returns the tuple's length (0: one array)."""
    if isinstance(value, tuple):
        for i, v in enumerate(value):
            arrays[f"{key}/{i}"] = np.asarray(v)
        return len(value)
    arrays[key] = np.asarray(value)
    return 0


def save_artifact(art: Artifact, path: str | Path, *, weights: bool | None = None,
                  sample: bool | None = None) -> Path:
    """Write ``art`` as one ``.npz``. ``weights``: store its weights (True), or not (False: a reader that needs
    them draws them again, which only a portable initializer's draw allows); None (default) stores them unless
    they are the numpy reference's portable draw (``meta["redrawable"]``, set by :func:`make_artifact`).

    ``sample``: keep only a fixed sample of each intermediate output bigger than :data:`INTER_SAMPLE` entries (the
    same entries on every backend, as for gradients; the comparison samples the reference's alike), or every
    value. None (default) samples a framework's artifact whose branches are recorded (or that has no gradients)
    and keeps the reference's whole: its intermediates are what every framework is compared on, and where the
    activation kinks are found. The outputs are always kept whole."""
    from .weights import _write_atomic, _write_npz

    path = Path(path)
    if sample is None:
        sample = art.backend != "numpy" and (not art.gradients or bool(art.meta.get("branches")))
    redraw = bool(art.weights) and not weights and (weights is False or bool(art.meta.get("redrawable")))
    if redraw and not (_portable_name(art.meta.get("init")) and isinstance(art.meta.get("key"), int) and art.init):
        raise WeightsError(f"{path}: weights=False expected weights a portable initializer drew (meta 'init' one of "
                           f"its names, an int 'key', and their digests), received init "
                           f"{art.meta.get('init')!r}, key {art.meta.get('key')!r}")
    arrays: dict[str, np.ndarray] = {}
    counts = {"inputs": _pack(arrays, "input", art.input), "outputs": _pack(arrays, "output", art.output)}
    inter = {k: _sample(k, np.asarray(v), INTER_SAMPLE) for k, v in art.intermediates.items()} if sample else \
        art.intermediates
    for prefix, group in (("weights", {} if redraw else art.weights), ("inter", inter),
                          ("grad", art.gradients), ("train_state", art.train_state)):
        for name, arr in group.items():
            arrays[f"{prefix}/{name}"] = np.asarray(arr)
    branches: dict[str, list[Any]] = {}
    for name, arr in art.branches.items():  # sides of a kink: one bit each; a pool window's entry: one byte
        arr = np.asarray(arr)
        small = arr.dtype == bool or (arr.size and 0 <= arr.min() and arr.max() < 256)
        arrays[f"branch/{name}"] = np.packbits(arr.reshape(-1)) if arr.dtype == bool else \
            arr.reshape(-1).astype(np.uint8 if small else np.int64)
        branches[name] = [list(arr.shape), "sides" if arr.dtype == bool else "taken"]
    if art.train_output is not None:
        counts["train_outputs"] = _pack(arrays, "train_output", art.train_output)
    meta = {"format": FORMAT, "version": 1, "backend": art.backend, "spec": art.spec,
            "report": art.report.to_dict(), "inter_order": list(art.intermediates), "meta": art.meta,
            "init": art.init, **({"weights": "redraw"} if redraw else {}), **({"branches": branches} if branches else {}),
            **{k: n for k, n in counts.items() if n}}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, lambda fh: _write_npz(fh, arrays))
    return path


# header field -> (type, required): what save_artifact writes
_FIELDS = {"format": (str, True), "version": (int, True), "backend": (str, True), "spec": (dict, True),
           "report": (dict, True), "inter_order": (list, True), "meta": (dict, False), "init": (dict, False),
           "inputs": (int, False), "outputs": (int, False), "train_outputs": (int, False), "weights": (str, False),
           "branches": (dict, False)}


def _header(path: Path, data: dict[str, np.ndarray]) -> dict[str, Any]:
    raw = data.pop("__meta__", None)
    meta = None
    if raw is not None and raw.dtype == np.uint8 and raw.ndim == 1:
        try:
            meta = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            pass
    if not isinstance(meta, dict):
        raise WeightsError(f"{path}: expected a deferinit parity artifact, received an .npz without its JSON header "
                           f"('__meta__')")
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: expected format {FORMAT!r}, received {meta.get('format')!r}")
    for key, (kind, required) in _FIELDS.items():
        if (required or key in meta) and (not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool)):
            raise WeightsError(f"{path}: header field '{key}' expected a {kind.__name__}, received "
                               f"{str(meta.get(key, '(nothing)'))[:100]}")
    if meta.get("weights", "redraw") != "redraw" or ("weights" in meta and not (
            _portable_name(meta.get("meta", {}).get("init")) and isinstance(meta["meta"].get("key"), int)
            and not isinstance(meta["meta"].get("key"), bool) and meta.get("init"))):
        raise WeightsError(f"{path}: header field 'weights' expected 'redraw' with a portable initializer's name, "
                           f"an int key and the digests to check the draw against, received "
                           f"{str(meta.get('weights'))[:40]!r} with init {str(meta.get('meta', {}).get('init'))[:40]!r}")
    if meta["version"] != 1:
        raise WeightsError(f"{path}: expected artifact version 1, received version {meta['version']}")
    if not all(isinstance(k, str) for k in meta["inter_order"]) or \
            not all(isinstance(v, str) for v in meta.get("init", {}).values()):
        raise WeightsError(f"{path}: header fields 'inter_order' and 'init' expected strings, received "
                           f"{str(meta['inter_order'])[:100]}, {str(meta.get('init'))[:100]}")
    return meta


def load_artifact(path: str | Path) -> Artifact:
    """Read an artifact written by :func:`save_artifact` (anywhere): every header field and array is checked."""
    from .weights_read import read_npz

    path = Path(path)
    data = read_npz(path)
    meta = _header(path, data)
    try:
        report = ShapeReport.from_dict(meta["report"])
    except SpecError as exc:
        raise WeightsError(f"{path}: header field 'report': {exc}") from None
    keys = {k: [f"{k}/{i}" for i in range(meta[k + "s"])] if meta.get(k + "s") else [k]
            for k in ("input", "output", "train_output")}
    trained_keys = keys.pop("train_output")  # the training-mode step's output: absent when it was skipped
    optional = trained_keys if "train_output/0" in data or "train_output" in data else []
    missing = [key for want in keys.values() for key in want if key not in data]
    if missing:
        raise WeightsError(f"{path}: expected arrays {' and '.join(repr(k) for w in keys.values() for k in w)} in "
                           f"the artifact, received no {' or '.join(repr(k) for k in missing)}")
    for key in keys["output"] + optional:
        if key in data and data[key].dtype.kind != "f":
            raise DTypeError(f"{path}: array '{key}' expected floating-point values, received dtype {data[key].dtype}")
    inputs, outputs = ([data.pop(k) for k in keys[g]] for g in ("input", "output"))
    if any(k not in data for k in optional):
        raise WeightsError(f"{path}: expected arrays {', '.join(repr(k) for k in optional)} in the artifact, "
                           f"received no {' or '.join(repr(k) for k in optional if k not in data)}")
    trained = [data.pop(k) for k in optional]
    train_output = (tuple(trained) if meta.get("train_outputs") else trained[0]) if trained else None
    groups: dict[str, dict[str, np.ndarray]] = {"weights": {}, "inter": {}, "grad": {}, "train_state": {},
                                                "branch": {}}
    for key, arr in data.items():
        prefix, _, name = key.partition("/")
        if prefix in groups and name:
            groups[prefix][name] = arr
    inter = {k: groups["inter"][k] for k in meta["inter_order"] if k in groups["inter"]}
    x = tuple(inputs) if meta.get("inputs") else inputs[0]
    weights: Mapping[str, np.ndarray] = groups["weights"]
    if meta.get("weights") == "redraw":
        weights = _Redrawn(str(path), meta["spec"], x, meta["meta"]["init"], meta["meta"]["key"], dict(meta["init"]))
    return Artifact(meta["backend"], meta["spec"], report, x, dict(meta.get("init", {})), weights,
                    tuple(outputs) if meta.get("outputs") else outputs[0], inter, groups["grad"], train_output,
                    groups["train_state"], meta.get("meta", {}), _branches(path, meta, groups["branch"]))


def _branches(path: Path, meta: dict[str, Any], stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, entry in meta.get("branches", {}).items():
        ok = isinstance(entry, list) and len(entry) == 2 and entry[1] in ("sides", "taken") and \
            isinstance(entry[0], list) and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40
                                               for d in entry[0])
        arr = stored.get(name)
        size = int(np.prod(entry[0], dtype=np.int64)) if ok else -1
        if ok and arr is not None and arr.ndim == 1 and arr.dtype.kind in "ui":
            if entry[1] == "sides" and arr.size == -(-size // 8):
                out[name] = np.unpackbits(arr.astype(np.uint8), count=size).astype(bool).reshape(entry[0])
                continue
            if entry[1] == "taken" and arr.size == size:
                out[name] = arr.astype(np.int64).reshape(entry[0])
                continue
        raise WeightsError(f"{path}: header field 'branches' entry '{str(name)[:80]}' expected [shape, 'sides' or "
                           f"'taken'] matching array 'branch/{str(name)[:80]}', received {str(entry)[:100]} and "
                           f"{'no array' if arr is None else f'an array of {arr.size} {arr.dtype}'}")
    return out
