"""Shared helpers of the tests in this folder. Assigning a value to a field of a config once it is made
(`unime.options.RangeChecked.__setattr__`), for the walking tests of every config (`tests/test_config_types.py`,
`tests/test_config_ranges.py`)."""

from __future__ import annotations

import dataclasses

import pytest

from unime.errors import OptionError


def refused_assignment(cfg, name: str, value) -> OptionError | None:
    """The OptionError of `cfg.NAME = value`, after checking that the field kept its value; None for a frozen
    config, which refuses every assignment (FrozenInstanceError)."""
    before = getattr(cfg, name)
    if type(cfg).__dataclass_params__.frozen:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(cfg, name, value)
        return None
    with pytest.raises(OptionError) as caught:
        setattr(cfg, name, value)
    assert getattr(cfg, name) is before
    return caught.value


def assert_assignment_refused_as_made(cls, required: dict, name: str, value) -> None:
    """`cls(**required, NAME=value)` and, on a config made without it, `cfg.NAME = value` are refused with the same
    message (in the Python API's names and as the command line names them)."""
    with pytest.raises(OptionError) as made:
        cls(**{**required, name: value})
    assigned = refused_assignment(cls(**required), name, value)
    if assigned is not None:
        assert str(assigned) == str(made.value)
        assert assigned.render(lambda field: f"<{field}>") == made.value.render(lambda field: f"<{field}>")
