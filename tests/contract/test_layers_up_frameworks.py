"""The cases of GlobalAvgPool2D(keepdims=True) and deferinit.layers_up (tests/cases.py, block "layers-b") through
the parity check, each selected framework against the reference in one process: outputs, every layer's output,
init, a training step, and gradients against the reference's finite differences."""

from __future__ import annotations

import pytest

from cases import BY_ID
from deferinit.parity import parity

UP = ["gap_keepdims", "gap_keepdims_channels_last", "conv_transpose", "conv_transpose_channels_last",
      "conv1d_transpose", "upsample", "upsample_channels_last"]


@pytest.mark.parametrize("case_id", UP)
def test_up_cases_agree_with_reference(framework: str, case_id: str) -> None:
    case = BY_ID[case_id]
    result = parity(case.make(), case.data(), backends=[framework])
    r = result.results[framework]
    assert result.passed, "\n".join(result.failures())
    assert r.init_identical is True
    assert r.train_ok in (True, None)
    assert r.max_abs <= 1e-4
