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
