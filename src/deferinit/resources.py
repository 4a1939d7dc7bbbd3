"""How much memory a model needs, from the reference rules alone, and how much this process may still take.

Frameworks do not fail cleanly when memory runs out. Measured in a child process with a 4 GiB heap cap
(``RLIMIT_DATA``): a ``Dense(2**16)`` forward on a batch of ``2**17`` (a 32 GiB output) segfaults TensorFlow
2.21 and aborts JAX 0.10 (``Check failed: buffer_.IsConcrete()`` when the result is read); ``OneHot(2**31)``
and ``Conv2D(2, 3, padding=2**20)`` on an 8x8 input do the same on JAX; torch and MXNet raise. So the
compiled model estimates, before the framework sees anything, what a forward keeps alive at once:

* parameters, and the constant tables frameworks build when a layer is constructed (``PositionalEncoding``'s
  ``max_len x dim`` sinusoids), counted twice while they are built (numpy temporaries);
* for inference, the activations alive together: the input and output of the running layer (so the two
  largest consecutive outputs of a chain), what a ``Residual`` or ``Concat`` holds meanwhile, and the layer's
  own workspace (attention scores, a zero-padded copy, the recurrent gates of every step), from each layer's
  ``buffers`` hook;
* for training (``gradients``, ``training=True``, ``intermediates``), every layer's output and workspace,
  which the backward pass keeps, and one gradient per parameter.

The estimate is the same on every backend (the same spec and input get the same answer), a little above what
the leanest framework needs and never many times over it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from .errors import ResourceError, fmt_shape, where
from .layers import Leaf
from .merges import Merge
from .shapes import Inference, Node
from .spec import Concat, Residual, Sequential, Shape

__all__ = ["available_memory", "Footprint", "footprint", "small", "fmt_bytes", "Tensor", "INDEX_LIMIT", "check_sizes", "check_fits"]

#: no framework indexes a tensor of 2**63 bytes or more (numpy: "array is too big"; torch, XLA and TF: int64 sizes)
INDEX_LIMIT = 2**63 - 1


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read()
    except (OSError, ValueError):
        return None


def _status_kib(field: str) -> int | None:
    text = _read("/proc/self/status") or ""
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def _cgroup_headroom() -> int | None:
    """Bytes the process's memory cgroup (v2 or v1) still allows, counting reclaimable page cache as free."""
    groups = _read("/proc/self/cgroup") or ""
    for line in groups.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, limit_f, usage_f, cache_f = "/sys/fs/cgroup" + path, "memory.max", "memory.current", "inactive_file"
        elif "memory" in controllers.split(","):
            base, limit_f, usage_f, cache_f = ("/sys/fs/cgroup/memory" + path, "memory.limit_in_bytes",
                                               "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        limit, usage = _read(os.path.join(base, limit_f)), _read(os.path.join(base, usage_f))
        if not limit or not usage or not limit.strip().isdigit() or int(limit) >= 2**60:
            continue  # "max", or v1's "no limit" (2**63 rounded to pages)
        cache = 0
        for stat in (_read(os.path.join(base, "memory.stat")) or "").splitlines():
            key, _, value = stat.partition(" ")
            if key == cache_f and value.strip().isdigit():
                cache = int(value)
        return max(int(limit) - max(int(usage) - cache, 0), 0)
    return None


def available_memory() -> int | None:
    """Bytes this process can still allocate: the least of Linux's ``MemAvailable``, what its memory cgroup
    allows, and the room left under its own ``RLIMIT_DATA``/``RLIMIT_AS`` (a container's or a test's cap, which
    ``MemAvailable`` does not see). None when none of these can be read."""
    room: list[int] = []
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            room.append(int(line.split()[1]) * 1024)
            break
    else:
        try:
            room.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    cgroup = _cgroup_headroom()
    if cgroup is not None:
        room.append(cgroup)
    try:
        import resource

        for which, used in ((resource.RLIMIT_DATA, "VmData"), (resource.RLIMIT_AS, "VmSize")):
            soft = resource.getrlimit(which)[0]
            if soft != resource.RLIM_INFINITY and soft > 0:  # /proc/self/status is read only under a limit
                room.append(max(soft - (_status_kib(used) or 0), 0))
    except (ImportError, ValueError, OSError, AttributeError):
        pass
    return min(room) if room else None


def fmt_bytes(n: int) -> str:
    """``32.0 GiB``; sizes past a float's range (an input dim of 10**400) as a power of ten."""
    if n >= 2**100:
        return f"about 10^{len(str(n)) - 1} bytes"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


class Tensor(NamedTuple):
    """One tensor the estimate counted, for messages and the per-backend size limits."""

    path: str
    layer: Any
    what: str     # "output", "parameter 'x.weight'", a buffer's description
    shape: Shape
    itemsize: int
    resident: bool = False  # a constant table: built in numpy by the frameworks that build it at all

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.elements * self.itemsize

    def describe(self) -> str:
        if self.what == "input":
            return f"the model input {fmt_shape(self.shape)} ({fmt_bytes(self.nbytes)})"
        return f"{where(self.path, self.layer)} {self.what} {fmt_shape(self.shape)} ({fmt_bytes(self.nbytes)})"


@dataclass(frozen=True)
class Footprint:
    """Bytes a model needs, by kind; ``largest`` names the biggest single tensor (the one to blame)."""

    params: int
    grads: int       # trainable parameters: one gradient each in a backward pass
    tables: int      # constant tables built with the layers, resident as long as the model
    peak: int        # activations and workspace alive together in an inference forward (input included)
    saved: int       # activations and workspace a training forward keeps for the backward pass (input included)
    tensors: Shape   # every Tensor counted, for the size limits
    largest: Tensor

    @property
    def init(self) -> int:
        """A concrete ``apply_init``: parameters, tables (twice while built) and a dry-run forward."""
        return self.params + 2 * self.tables + self.peak

    @property
    def training(self) -> int:
        """A training forward and backward on top of what is already allocated."""
        return self.grads + self.saved


def _concrete(shape: Shape) -> Shape:
    if None not in shape:  # the rules' shapes are ints already: the usual case costs no new tuple
        return shape
    return tuple(1 if d is None else int(d) for d in shape)  # None dims are 1 in the dummy apply_init builds


class _Estimate:
    def __init__(self, inference: Inference, input_itemsize: int) -> None:
        self.inputs, self.layers = inference.inputs, inference.report.layers
        self.data_format = inference.report.data_format
        self.input_shape = _concrete(inference.report.input_shape)
        self.input_itemsize = input_itemsize
        self.tensors: list[Tensor] = [Tensor("", None, "input", self.input_shape, input_itemsize)]
        self.tables = 0
        self.saved = 0
        self._cache: dict[str, tuple[int, int]] = {}
        self.layer_of: dict[str, Any] = {}

    def out_shape(self, node: Node) -> Shape:
        return _concrete(self.layers[node.path].output_shape)

    def out_bytes(self, node: Node) -> int:
        return 4 * math.prod(self.out_shape(node))

    def peak(self, node: Node) -> int:
        """Bytes alive while ``node`` runs, its input excluded (its caller holds that), its output included."""
        if node.tied_to is not None and not isinstance(node.layer, Leaf):
            # a reused container: its inner shapes were recorded for the first use only; scale by the input size
            first, here = math.prod(_concrete(self.inputs[node.tied_to.path])), math.prod(_concrete(self.inputs[node.path]))
            peak, saved = (v * here // max(first, 1) for v in self._cache.get(node.tied_to.path, (0, 0)))
            self.saved += saved
            return max(peak, self.out_bytes(node))
        layer = node.layer
        if isinstance(layer, Leaf):
            self.layer_of[node.path] = layer
            out = self.out_bytes(node)
            self.tensors.append(Tensor(node.path, layer, "output", self.out_shape(node), 4))
            work = 0
            for buf in layer.buffers(_concrete(self.inputs[node.path]), self.out_shape(node), self.data_format):
                self.tensors.append(Tensor(node.path, layer, buf.what, _concrete(buf.shape), buf.itemsize, buf.resident))
                if buf.resident:
                    self.tables += buf.itemsize * math.prod(buf.shape) if node.tied_to is None else 0
                else:
                    work += buf.itemsize * math.prod(buf.shape)
            self.saved += out + work
            return out + work
        saved_before = self.saved
        if isinstance(layer, Sequential):
            peak = 0
            for i, child in enumerate(node.children):
                held = self.out_bytes(node.children[i - 1]) if i else 0
                peak = max(peak, held + self.peak(child))
        elif isinstance(layer, Residual):
            body, short = node.children[0], (node.children[1] if len(node.children) > 1 else None)
            peak = self.peak(body)
            held = self.out_bytes(body)
            short_out = 0
            if short is not None:
                peak = max(peak, held + self.peak(short))
                short_out = self.out_bytes(short)
            peak = max(peak, held + short_out + self.out_bytes(node))
            self.saved += self.out_bytes(node)
        elif isinstance(layer, (Concat, Merge)):  # every branch's output is held until the merge
            peak = held = 0
            for child in node.children:
                peak = max(peak, held + self.peak(child))
                held += self.out_bytes(child)
            peak = max(peak, held + self.out_bytes(node))
            self.saved += self.out_bytes(node)
        else:  # pragma: no cover - spec.py has no other container
            raise TypeError(f"unknown container {type(layer).__name__}")
        self._cache[node.path] = (peak, self.saved - saved_before)
        return peak


def footprint(inference: Inference) -> Footprint:
    """What a model of these shapes needs (see the module docstring), from the reference rules alone."""
    import numpy as np

    dtype = np.dtype(inference.report.input_dtype)
    input_itemsize = dtype.itemsize if dtype.kind in "iu" else 4  # float data reaches the frameworks as float32
    est = _Estimate(inference, input_itemsize)
    input_bytes = input_itemsize * math.prod(est.input_shape)
    peak = est.peak(inference.root)  # the root is a LazyModel: a Sequential whose input the caller holds
    params = grads = 0
    for name, spec in inference.params.items():
        nbytes = 4 * math.prod(spec.shape)
        params += nbytes
        grads += nbytes if spec.trainable else 0
        path = name.rpartition(".")[0]
        est.tensors.append(Tensor(path, est.layer_of.get(path), f"parameter '{name}'", spec.shape, 4))
    largest = max(est.tensors, key=lambda t: t.nbytes)
    return Footprint(params=params, grads=grads, tables=est.tables, peak=input_bytes + peak,
                     saved=input_bytes + est.saved, tensors=tuple(est.tensors), largest=largest)



def small(inference: Inference, limit: int = 2**26) -> bool:
    """Whether everything :func:`footprint` would count, all added up, stays under ``limit`` bytes: the input at 8
    bytes an element, every parameter, every position's output and every layer's buffers (twice). One cheap pass
    over what the rules recorded, without building the per-tensor list; a reused container (whose inner shapes are
    scaled, not recorded) answers False, so the full estimate runs. Below ``SMALL`` no check on the footprint can
    refuse: ``check_fits`` asks for nothing, and no tensor comes near an index or per-backend size limit."""
    total = 8 * math.prod(_concrete(inference.report.input_shape))
    for p in inference.params.values():
        total += 4 * math.prod(p.shape)
    for info in inference.report.layers.values():
        total += 4 * math.prod(_concrete(info.output_shape))
    if total >= limit:
        return False
    data_format, layers = inference.report.data_format, inference.report.layers
    for node in inference.root.walk():
        layer = node.layer
        if not isinstance(layer, Leaf):
            if node.tied_to is not None:
                return False
        elif type(layer).buffers is not Leaf.buffers:
            for buf in layer.buffers(_concrete(inference.inputs[node.path]), _concrete(layers[node.path].output_shape),
                                     data_format):
                total += 2 * buf.itemsize * math.prod(_concrete(buf.shape))
    return total < limit



# ------------------------------------------------------------------------------------------------ refusals
#: below this many bytes a request is not worth reading /proc (about 50 us) for
SMALL = 2**26


def check_sizes(who: str, fp: Footprint, *, max_elements: int | None = None, max_dim: int | None = None,
                note: str = "", after: str = "nothing was allocated") -> None:
    """Every tensor within what frameworks index: 2**63 bytes for all, and a backend's own narrower limits."""
    for t in fp.tensors:
        elements = math.prod(t.shape)
        if elements * t.itemsize > INDEX_LIMIT:
            raise ResourceError(f"{who}: {t.describe()} has {_count(t.elements)} elements, beyond what any framework "
                                f"can index (2**63 bytes); {after}. Check the sizes in the spec and the input shape")
        if t.resident:  # numpy tables (or none at all, on MXNet): the framework's own limits do not apply
            continue
        if max_elements is not None and elements > max_elements:
            raise ResourceError(f"{who}: {t.describe()} has {t.elements:,} elements, more than the {max_elements:,} "
                                f"this backend takes in one tensor ({note}); {after}. Use a smaller batch or layer")
        if max_dim is not None and any(d > max_dim for d in t.shape):
            raise ResourceError(f"{who}: {t.describe()} has an axis of {max(t.shape):,}, more than the {max_dim:,} "
                                f"this backend takes ({note}); {after}. Use a smaller layer")


def check_fits(who: str, need: int, doing: str | Callable[[], str], fp: Footprint, parts: str | Callable[[], str],
               fraction: float, after: str, advice: str | Callable[[], str]) -> None:
    """Refuse ``need`` bytes when more than ``fraction`` of the memory available now (``doing``, ``parts`` and
    ``advice`` may be functions, called only for the message: apply_init on a small model pays for no words)."""
    if need < SMALL:
        return
    have = available_memory()
    if have is None or need <= fraction * have:
        return
    doing, parts = doing() if callable(doing) else doing, parts() if callable(parts) else parts
    raise ResourceError(f"{who}: {doing} would need {fmt_bytes(need)} ({parts}; the largest: {fp.largest.describe()}) "
                        f"but only {fmt_bytes(have)} of memory is available (the limit is {fraction:.0%} of it); "
                        f"{after}. {advice() if callable(advice) else advice}")


def batch_that_fits(batch: int, need: int, fixed: int, fraction: float) -> int:
    """The largest batch whose activations fit, assuming they grow with the batch (0: not even one example)."""
    have = available_memory() or 0
    per_example = max((need - fixed) // max(batch, 1), 1)
    return max(int(fraction * have - fixed) // per_example, 0)


def _count(n: int) -> str:
    return f"{n:,}" if n < 10**18 else f"about 10^{len(str(n)) - 1}"
