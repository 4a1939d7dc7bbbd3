"""The PyTorch backend: torch's own lazy modules (``nn.LazyLinear``, ``nn.LazyConv2d``, ``nn.LazyBatchNorm2d``)
find every input-dependent dim in a dry run, exactly as in the d2l book's lazy-initialization chapter.

The native model mirrors the spec tree: an ``nn.Sequential`` per Sequential/LazyModel (children named by the
canonical segments, so ``state_dict`` keys are the canonical names), torch's own modules for the leaves, and
two small modules for Residual and Concat (``modules.py``; the walk is ``structure.py`` over ``adapters/tree.py``, the
leaf table ``leaves.py``; what is read off the native model after the dry run, ``native_state.py``). Tied layers
are the same module object.
Every canonical layout is torch's own layout, so no weight is transposed.

* Concrete ``apply_init``: dry run on CPU in eval mode under ``no_grad`` (so BatchNorm statistics are not
  touched); the lazy modules materialize with torch's default init, under ``torch.manual_seed(key)`` inside
  ``torch.random.fork_rng`` for an int key (deterministic, and the caller's global RNG stream is left alone).
* From the third ``apply_init`` of an equal spec on an equal input (shape, dtype) in the process on, concrete or
  abstract, an init starts from the template the second one kept right after its dry run (``template.py``): new
  modules of the classes and shapes torch made, drawn by their own ``reset_parameters`` in the dry run's order
  (bit for bit the lazy path's weights for the same key), with no lazy module and no dry run (0.5-0.8x the
  hand-written lazy dry run in the bench). Behind ``fastpath.ENABLED``; a module that is not plain, a global module
  hook of the user's and varying dims take the lazy path every time.
* Abstract ``apply_init``: the still-uninitialized parameters are re-homed to the meta device and the dry run
  runs on a meta input under ``torch.device("meta")``: shapes only, no parameter memory. ``materialize``
  then allocates the same modules in place (``to_empty(device="cpu")``) and re-runs their
  ``reset_parameters`` in the dry run's order, so it gives the concrete init's weights bit for bit.
* Forward: the native module called directly (autograd on, as a hand-written torch model); ``.train()`` /
  ``.eval()`` only when the mode changes.
* Sequence layers (``sequence.py``): recurrent layers, attention, class token and position embedding are
  deferred by torch's own ``LazyModuleMixin`` and become plain ``nn.GRU``/``nn.Linear``/... modules; LayerNorm,
  which torch ships no lazy form of, is ``modules.LazyLayerNorm`` written the same way, so every shape is
  torch's own (``source="native"``). Varying (None) dims are dry-run on meta with the smallest stand-in
  size the rules accept (``_standin.py``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ...errors import DeferInitError
from .. import tree
from . import fastpath
from . import native_state as ns
from . import tensors as tt
from .initializing import TorchInit
from .modules import F32
from .structure import TorchRunner

__all__ = ["TorchModel"]


# --------------------------------------------------------------------------------------------- the model
class TorchModel(TorchInit):
    """A spec compiled for PyTorch; ``native`` is the ``nn.Module`` (an ``nn.Sequential``)."""

    backend = "torch"

    def _inference_mode(self) -> None:
        net = self._native
        if net is not None and net.training:
            net.train(False)

    # ---------------------------------------------------------------- data
    def _is_native(self, x: Any) -> bool:
        return isinstance(x, torch.Tensor)

    def _signature(self, x: torch.Tensor) -> tuple:
        # the per-call cache key: torch.Size is a tuple and torch.dtype hashes, so nothing is converted
        # (the base class's tuple(shape), str(dtype) cost ~0.5 us of a 20 us MLP forward)
        return (x.shape, x.dtype)

    def _shape_dtype(self, x: Any) -> tuple[tuple, Any]:
        if isinstance(x, torch.Tensor):
            return tuple(x.shape), tt.NP_DTYPES.get(x.dtype, np.dtype(object))
        return super()._shape_dtype(x)

    def _to_native(self, x: Any) -> torch.Tensor:
        arr = np.asarray(x)
        if arr.dtype.kind in "iu" and arr.dtype not in (np.int32, np.int64):
            arr = arr.astype(np.int64)
        if not (arr.flags.c_contiguous and arr.flags.writeable):  # from_numpy refuses negative strides
            arr = np.array(arr, order="C")
        t = torch.from_numpy(arr)
        net = self._native
        p = next(net.parameters(), None) if net is not None else None
        if p is not None and p.device.type not in ("cpu", "meta"):  # a model the user moved (model.native.cuda())
            t = t.to(p.device)
        return t

    def to_numpy(self, y: Any) -> np.ndarray:
        return y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)

    # ---------------------------------------------------------------- running
    def _call(self, x: Any, training: bool) -> Any:
        """The steady state of an inference call, the base class's ``_call`` with its hooks inlined: a plain tensor
        whose (shape, dtype) was already checked (``_checked`` is emptied by every init and load, and stays empty
        while the model has no values), of a dtype the model takes, on a model with no token ids to range-check.
        Anything else takes the base class's path. Saves three Python calls, 0.3-0.4 us of the MLP's 20 us."""
        if not training and type(x) is torch.Tensor and (x.shape, x.dtype) in self._checked and \
                x.dtype in tt.READY and self._index_limit is None and fastpath.ENABLED:
            net = self._native
            if net.training:  # type: ignore[union-attr]
                net.train(False)  # type: ignore[union-attr]
            try:
                return fastpath.call(net, x)  # type: ignore[arg-type]
            except (DeferInitError, KeyboardInterrupt):
                raise
            except Exception as exc:
                raise self._backend_error("forward", exc) from exc
        return super()._call(x, training)

    def _forward(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        net = self._native
        if net.training != training:  # type: ignore[union-attr]
            net.train(training)  # type: ignore[union-attr]
        if x.dtype not in tt.READY:
            x = tt.coerce(x)
        return fastpath.call(net, x)  # type: ignore[arg-type]

    def _get_weights(self) -> dict[str, np.ndarray]:
        return {name: ns.full(self._tensor(name)).detach().to("cpu", F32).numpy() for name in self.report.params}

    def _shard_init(self, x: Any, plan: Any, mesh: Any, init: Any, key: int) -> Any:
        from .sharded import shard_init  # deferinit.shard_init's hook: DTensors over a DeviceMesh

        return shard_init(self, x, plan, mesh, init, key)

    def _set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        with torch.no_grad():
            for name in self.report.params:
                self._tensor(name).copy_(torch.from_numpy(np.ascontiguousarray(weights[name], dtype=np.float32)))

    def _gradients(self, x: torch.Tensor, training: bool) -> dict[str, np.ndarray]:
        names = [n for n, p in self.report.params.items() if p.trainable]
        params = [self._tensor(n) for n in names]
        with torch.enable_grad():
            y = self._forward(x, training)
            grads = torch.autograd.grad(y.sum(), params, allow_unused=True)
        return {n: (np.zeros(tuple(p.shape), np.float32) if g is None else g.detach().to("cpu", F32).numpy())
                for n, p, g in zip(names, params, grads)}

    def _intermediates(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Runs the plan position by position (each in the spec's layout) with the native modules."""
        net = self._native
        if net.training:  # type: ignore[union-attr]
            net.eval()  # type: ignore[union-attr]
        record: dict[str, np.ndarray] = {}
        runner = TorchRunner(lambda path: self._module(net, path), self.spec.data_format == "channels_last")  # type: ignore[arg-type]
        with torch.no_grad():
            tree.run(self.root, x if x.dtype in tt.READY else tt.coerce(x), runner, record)
        return record
