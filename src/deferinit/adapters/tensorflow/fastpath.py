"""The per-call shortcut of the tensorflow backend, behind one switch.

``ENABLED`` (environment ``DEFERINIT_FASTPATH``, default on; ``DEFERINIT_FASTPATH=0`` turns it off): a call runs a
cached ``tf.function`` over the model call (one for inference, one for training, per input rank, with
``reduce_retracing`` so new batch, spatial or sequence sizes share one relaxed trace), and a float32 tensor
reaches it after one dict lookup on the table kept on the Keras model (about 1 us over the base class's 3-4 us of
checks). That is Keras's own fast path (``predict_on_batch``, ``fit``: a ``tf.function`` over the model call with
relaxed shapes) without Keras's data-adapter work around it. Measured on a ResNet-18-like net, batch 1 at 96x96:
15-17 ms, the same as a hand-written ``tf.function`` and ``predict_on_batch``; the eager Keras call takes 60-70 ms.

Off: the public path, ``model(x, training=...)``, Keras's eager call (a test runs models both ways and compares).
"""

from __future__ import annotations

import os
from typing import Any

# isort: off
from . import backend  # noqa: F401  first: it checks and sets KERAS_BACKEND before keras is imported
import keras
import tensorflow as tf
# isort: on

__all__ = ["ENABLED", "forward", "compiled"]

ENABLED = os.environ.get("DEFERINIT_FASTPATH", "1") != "0"


def tensor(x: Any) -> Any:
    """A tf tensor the model takes: Keras variables read, other floats cast to float32 (the parameters')."""
    if isinstance(x, keras.Variable):
        x = x.value
    return tf.cast(x, tf.float32) if x.dtype.is_floating and x.dtype != tf.float32 else x


def compiled(native: Any, training: bool, rank: int) -> Any:
    """The cached ``tf.function`` of ``native``'s call for ``training`` and inputs of ``rank``."""
    fns = native._deferinit_table.fns
    fn = fns.get((training, rank))
    if fn is None:
        # One per rank: relaxing across ranks would leave a shape of unknown rank, which Keras layers cannot take.
        # a function of one positional argument: Keras's __call__ takes (*args, **kwargs), and tf.function binding a
        # call to that signature (a partial over it) cost 14 us of each 250 us MLP call against a one-argument one
        fn = fns[(training, rank)] = tf.function(_one_argument(native, training), reduce_retracing=True)
    return fn


def _one_argument(native: Any, training: bool) -> Any:
    def call(x: Any) -> Any:
        return native(x, training=training)
    return call


def forward(native: Any, x: Any, training: bool) -> Any:
    """A call that missed the steady-state lookup (``KerasModel._forward``, inlined there to save a call frame:
    a float32 tensor whose compiled function exists, when ``ENABLED``)."""
    if isinstance(x, keras.KerasTensor):  # symbolic use inside another Keras model
        return native(x, training=training)
    if not ENABLED:
        return native(tensor(x), training=training)
    x = tensor(x)
    return compiled(native, training, len(x.shape))(x)
