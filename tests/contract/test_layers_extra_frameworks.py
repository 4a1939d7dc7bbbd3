"""The cases of deferinit.layers_extra and the new options (tests/cases.py, block "layers-a") through the parity
check, each selected framework against the reference in one process: outputs, every layer's output, init,
a training step, and gradients against the reference's finite differences."""

from __future__ import annotations

import pytest

from cases import BY_ID
from deferinit.parity import parity

EXTRA = ["activations_extra", "recurrent_last", "recurrent_last_bidirectional", "recurrent_last_rnn", "take_negative",
         "pools_extra", "pools_extra_channels_last", "adaptive_pool", "groupnorm", "groupnorm_channels_last",
         "layernorm_axis", "layernorm_axis_channels_last", "layerscale_droppath", "layerscale_channels_last"]


@pytest.mark.parametrize("case_id", EXTRA)
def test_extra_cases_agree_with_reference(framework: str, case_id: str) -> None:
    case = BY_ID[case_id]
    result = parity(case.make(), case.data(), backends=[framework])
    r = result.results[framework]
    assert result.passed, "\n".join(result.failures())
    assert r.init_identical is True
    assert r.train_ok in (True, None)
    assert r.max_abs <= 1e-4


@pytest.mark.parametrize("name", ["relu6", "relu"])
def test_kink_gradient_is_zero_at_exact_zero(framework: str, name: str) -> None:
    """PyTorch's convention at an activation's kink: relu6'(0) = relu'(0) = 0. Exact zeros are common:
    an inference-mode BatchNorm with zero running mean and shift maps zero input to exactly 0 (a depthwise
    convolution over an all-zero patch gives one). Derived by hand: d sum(act(BN(x))) / d shift counts the values
    strictly inside the activation's linear range; BN(x) = x / sqrt(1 + eps) here."""
    import numpy as np

    import deferinit as di
    from deferinit.layers import Activation, BatchNorm

    x = np.zeros((2, 3, 2, 2), np.float32)
    x[0, 0] = 1.0            # inside: 4 values of channel 0
    x[1, 1] = 7.0            # saturated for relu6 (relu: inside)
    model = di.compile(di.LazyModel([BatchNorm(), Activation(name)]), framework)
    model.apply_init(x)
    grads = model.gradients(x)
    upper = 0.0 if name == "relu6" else 4.0
    np.testing.assert_allclose(np.asarray(grads["0.bias"]), [4.0, upper, 0.0], atol=1e-6)
