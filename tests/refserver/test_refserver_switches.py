"""Faults and dialects as data: parsing, validation, JSON round trips, and the event plans."""

from __future__ import annotations

import json

import pytest

from gp_lib.protocol import AGENT_COMPLETED, AGENT_STARTED, EVENT_NAMES, TOOL_COMPLETED, TOOL_EXECUTING
from gp_lib.refserver import FAULT_NAMES, Faults, parse_fault_spec
from gp_lib.refserver.agent import event_plan


# -- faults -----------------------------------------------------------------------

def test_no_fault_is_on_by_default():
    faults = Faults()
    assert faults.active == []
    assert faults.setup_ms == 15 and faults.setup_ms_per_concurrent == 2 and faults.agent_step_ms == 5
    assert faults.services_down == () and faults.factory_config == {"max_connections": -1}


@pytest.mark.parametrize("spec, expected", [
    ("race", ("race", "on")),
    ("dependencies", ("dependencies", "silent")),
    ("dependencies:close", ("dependencies", "close")),
    ("factory", ("factory", "config")),
    ("events", ("events", "omit_tools")),
    ("EVENTS:Misroute", ("events", "misroute")),
])
def test_fault_specs_parse_with_default_modes(spec, expected):
    assert parse_fault_spec(spec) == expected


@pytest.mark.parametrize("spec, named", [("latency", "latency"), ("events:shuffle", "shuffle"), ("race:off", "off")])
def test_bad_fault_specs_name_the_problem(spec, named):
    with pytest.raises(ValueError, match=named):
        parse_fault_spec(spec)


def test_faults_from_specs_combine_and_take_tunables():
    faults = Faults.from_specs(["race", "events:misroute", "dependencies:close"], setup_ms=50,
                               services_down="llm_service,agent_supervisor")
    assert faults.race and faults.events == "misroute" and faults.dependencies == "close"
    assert faults.setup_ms == 50.0
    assert faults.services_down == ("agent_supervisor", "llm_service")
    assert faults.active == ["race", "dependencies:close", "events:misroute"]
    assert set(FAULT_NAMES) == {"race", "dependencies", "factory", "events"}


def test_faults_round_trip_through_json():
    faults = Faults(race=True, factory="config", events="out_of_order", services_down=("database",),
                    factory_config={"websocket_port": "invalid"}, agent_step_ms=1)
    again = Faults.from_dict(json.loads(json.dumps(faults.to_dict())))
    assert again == faults


def test_merged_changes_only_what_is_given():
    faults = Faults(race=True, setup_ms=40).merged({"dependencies": True, "services_down": ["thread_service"]})
    assert faults.race and faults.setup_ms == 40 and faults.dependencies == "silent"
    assert faults.merged({"dependencies": None}).dependencies is None
    assert faults.merged({"dependencies": False}).dependencies is None


@pytest.mark.parametrize("changes, field_name", [
    ({"bogus": 1}, "bogus"),
    ({"race": "yes"}, "race"),
    ({"dependencies": "loud"}, "dependencies"),
    ({"events": 3}, "events"),
    ({"setup_ms": -1}, "setup_ms"),
    ({"agent_step_ms": "fast"}, "agent_step_ms"),
    ({"setup_ms_per_concurrent": True}, "setup_ms_per_concurrent"),
    ({"services_down": ["redis"]}, "services_down"),
    ({"services_down": 7}, "services_down"),
    ({"factory_config": [1]}, "factory_config"),
])
def test_bad_fault_values_name_the_field(changes, field_name):
    with pytest.raises(ValueError, match=field_name):
        Faults().merged(changes)


# -- agent event plans ----------------------------------------------------------------

def test_event_plans_have_each_fault_signature():
    healthy = [kind for kind, _ in event_plan(None)]
    assert set(healthy) == set(EVENT_NAMES) and healthy[0] == AGENT_STARTED and healthy[-1] == AGENT_COMPLETED
    omitted = [kind for kind, _ in event_plan("omit_tools")]
    assert TOOL_EXECUTING not in omitted and TOOL_COMPLETED not in omitted and omitted[-1] == AGENT_COMPLETED
    shuffled = [kind for kind, _ in event_plan("out_of_order")]
    assert shuffled.index(AGENT_COMPLETED) < shuffled.index(TOOL_COMPLETED) and shuffled[-1] != AGENT_COMPLETED
