"""Shortcuts on torch's private APIs, per call and per init, behind one switch.

``DEFERINIT_FASTPATH=0`` in the environment (read at import) turns them off: every call then takes torch's
public path (``module(x)``) and gives the same results (tests/backends/torch/test_fastpath_torch.py runs a
model both ways).

* ``call``: ``nn.Module.__call__`` goes ``_wrapped_call_impl`` -> ``_call_impl`` -> ``forward``. On the root
  module only, when none of the hook registries ``_call_impl`` reads is set (the module's own and torch's private
  global ones), no ``torch.compile`` wrapper is installed and no TorchScript trace is running, ``forward`` is
  called directly: the same test ``_call_impl`` makes, minus its two Python frames. Any hook sends the call down
  the public path, so a user's hooks on the native model still fire.
* The init template (``template.py``): a repeat ``apply_init`` of an equal spec on an equal input copies the
  modules torch built the first time (their ``__dict__``, new tensors) instead of building lazy modules and
  dry-running them; off, every ``apply_init`` takes the lazy path (tests/backends/torch/test_template_torch.py
  compares the two); for graph specs, a repeat abstract ``apply_init`` the same way
  (tests/backends/torch/test_graph_template_torch.py).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _m

__all__ = ["ENABLED", "call"]

ENABLED = os.environ.get("DEFERINIT_FASTPATH", "1") != "0"

# torch's private global registries, read by _call_impl (the last one is absent from older torch)
_G1, _G2, _G3, _G4 = (_m._global_forward_hooks, _m._global_forward_pre_hooks, _m._global_backward_hooks,
                      _m._global_backward_pre_hooks)
_tracing = torch._C._get_tracing_state


def call(net: nn.Module, x: Any) -> Any:
    """``net(x)``, through ``forward`` directly where ``_call_impl`` would do nothing else."""
    if ENABLED and not (_G1 or _G2 or _G3 or _G4 or net._forward_hooks or net._forward_pre_hooks
                        or net._backward_hooks or net._backward_pre_hooks
                        or getattr(net, "_compiled_call_impl", None) is not None or _tracing()):
        return net.forward(x)
    return net(x)
