"""Keras 3 fixes its backend at first import: this module checks and sets it before anything imports keras.

Every module of this package that imports keras imports this one first (``from . import backend``), so a wrong
``KERAS_BACKEND`` is our clear error, not Keras's failure to load another framework.
"""

from __future__ import annotations

import os
import sys

from ...errors import BackendUnavailableError

__all__ = ["claim_keras_backend"]


def claim_keras_backend() -> None:
    """Keras 3 fixes its backend at first import: make sure it is (or will be) TensorFlow, or say how to fix it.
    Checked before keras is imported, so a wrong KERAS_BACKEND is our clear error, not Keras's failure to load
    another framework."""
    fix = ("Keras 3 fixes its backend when it is first imported; set the environment variable "
           "KERAS_BACKEND=tensorflow before anything imports keras (for example at the top of your script, or "
           "`KERAS_BACKEND=tensorflow python ...`), in a process that needs the tensorflow backend")
    loaded = sys.modules.get("keras")
    if loaded is not None:
        try:
            active = loaded.backend.backend()
        except Exception:  # a half-imported or unusual keras module: the check after the import decides
            active = None
        if active is not None and active != "tensorflow":
            raise BackendUnavailableError(f"backend tensorflow: expected Keras to use its 'tensorflow' backend, "
                                          f"received keras already imported with the {active!r} backend; {fix}")
        return
    env = os.environ.get("KERAS_BACKEND")
    if env is not None and env != "tensorflow":
        raise BackendUnavailableError(f"backend tensorflow: expected KERAS_BACKEND to be unset or 'tensorflow', "
                                      f"received KERAS_BACKEND={env!r}, which would make Keras use another "
                                      f"backend; {fix}")
    os.environ["KERAS_BACKEND"] = "tensorflow"


claim_keras_backend()

import keras  # noqa: E402

if keras.backend.backend() != "tensorflow":  # pragma: no cover - a keras.json or a plugin forced another one
    raise BackendUnavailableError(f"backend tensorflow: expected Keras to use its 'tensorflow' backend, received "
                                  f"{keras.backend.backend()!r}; set KERAS_BACKEND=tensorflow before importing keras")
