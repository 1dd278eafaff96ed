"""The finiteness rule: a finite sum is enough, an overflowing sum of finite values still passes."""

from __future__ import annotations

import pytest
import torch

from ssam_cli.errors import UserError
from ssam_cli.finite import require_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_finite_values_pass_even_when_their_sum_overflows(dtype):
    huge = torch.full((64,), torch.finfo(dtype).max / 2, dtype=dtype)  # the sum is inf, every value finite
    assert not torch.isfinite(huge.sum())
    assert require_finite(huge, "x") is huge


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_value_is_refused_with_the_message(bad):
    t = torch.zeros(8)
    t[5] = bad
    with pytest.raises(UserError, match="^named$"):
        require_finite(t, "named")


def test_integer_tensors_are_finite():
    assert require_finite(torch.arange(4), "x").dtype == torch.int64
