"""The typed change record and the rollout phase at the flag stores' boundary."""

from __future__ import annotations

import asyncio
import json

import pytest

from kvplan.control import rollout
from kvplan.control.analysis import Thresholds
from kvplan.control.state import (
    FlagChange,
    InvalidWeight,
    MemoryFlagStore,
    RolloutPhase,
    flags_from_record,
    flags_to_record,
)
from kvplan.errors import InputError
from kvplan.plan import Plan


@pytest.mark.parametrize("weight", [-1, 101, True, "50", 2.5])
def test_a_change_refuses_a_weight_outside_0_to_100(weight: object) -> None:
    with pytest.raises(InvalidWeight):
        FlagChange(weight=weight)  # type: ignore[arg-type]


def test_a_change_refuses_a_phase_that_is_not_one() -> None:
    with pytest.raises(InputError, match="rollout must be one of idle, progressing"):
        FlagChange(rollout="running")  # type: ignore[arg-type]


def test_only_the_fields_given_are_written_in_the_stored_form() -> None:
    assert FlagChange().record() == {}
    assert FlagChange(weight=0, killed=False, rollout=RolloutPhase.PAUSED).record() == {
        "weight": 0,
        "killed": False,
        "rollout": "paused",
    }


def test_the_phase_is_an_enum_in_memory_and_its_value_when_stored(plan: Plan) -> None:
    store = MemoryFlagStore(plan)
    flags = store.snapshot().buckets["8k"]
    d = rollout.start(flags, (50, 100), 60.0, 1, Thresholds(), now=0.0)
    after = asyncio.run(rollout.apply(store, flags, d, "test"))
    assert after.rollout is RolloutPhase.PROGRESSING and after.weight == 50
    record = flags_to_record(after)
    assert json.loads(json.dumps(record))["rollout"] == "progressing"
    assert flags_from_record(record) == after
