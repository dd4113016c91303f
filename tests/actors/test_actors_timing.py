"""The timing constants check their relations when imported: a broken one fails at once."""

from __future__ import annotations

import inspect

import pytest

import tokpay.actors.timing as timing


def load_with(replacements: dict[str, str]) -> dict[str, object]:
    """Run timing.py's source with some assignments replaced, as an import would."""
    source = inspect.getsource(timing)
    for old, new in replacements.items():
        assert old in source, old
        source = source.replace(old, new)
    namespace: dict[str, object] = {"__name__": "timing_under_test"}
    exec(compile(source, "timing_under_test", "exec"), namespace)
    return namespace


def test_the_shipped_constants_load() -> None:
    assert load_with({})["LEASE_SECONDS"] == timing.LEASE_SECONDS


@pytest.mark.parametrize(
    ("replacement", "relation"),
    [
        ({"DEAD_AFTER_SECONDS = 1.2": "DEAD_AFTER_SECONDS = 0.3"}, "three missed heartbeats"),
        ({"LEASE_SECONDS = 1.0": "LEASE_SECONDS = 0.3"}, "still holds"),
        ({"CONTROLLER_STALL_SECONDS = 0.3": "CONTROLLER_STALL_SECONDS = 1.0"}, "its own stall"),
        (
            {"CHANNEL_RETRY_BUDGET_SECONDS = 15.0": "CHANNEL_RETRY_BUDGET_SECONDS = 1.5"},
            "outlasts a primary",
        ),
    ],
)
def test_a_broken_relation_stops_the_import(replacement: dict[str, str], relation: str) -> None:
    with pytest.raises(RuntimeError, match=relation):
        load_with(replacement)
