from __future__ import annotations

import math

import pytest

from edged.backends.base import Sampling
from edged.common.errors import InvalidArgument
from edged.daemon.wire import sampling_from
from edged.v1 import edged_pb2 as pb


def test_unset_fields_take_defaults() -> None:
    s = sampling_from(pb.SamplingParams())
    assert s == Sampling()


def test_explicit_zero_is_not_default() -> None:
    s = sampling_from(pb.SamplingParams(temperature=0.0, top_k=0, max_tokens=0))
    assert s.temperature == 0.0 and s.top_k == 0 and s.max_tokens == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -0.1},
        {"temperature": math.nan},
        {"temperature": math.inf},
        {"top_p": 0.0},
        {"top_p": 1.01},
        {"min_p": 1.5},
        {"repeat_penalty": 0.0},
        {"repeat_penalty": 11.0},
        {"top_k": -1},
        {"max_tokens": 1 << 21},
        {"stop": ("",)},
        {"stop": tuple("abcdefghijklmnopq")},
        {"stop": ("x" * 300,)},
    ],
)
def test_invalid_values_are_rejected_with_the_field_named(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument) as err:
        Sampling(**kwargs)  # type: ignore[arg-type]
    field = next(iter(kwargs))
    assert field.split("_")[0] in str(err.value) or "stop" in str(err.value)
