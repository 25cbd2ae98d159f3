"""Loading the policy file: the example loads, and every mistake is named with its line and a fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bot.core.errors import ConfigError
from bot.core.policy import (
    AcknowledgedIncidentGate,
    ApproversApproval,
    AutoApproval,
    OnCallApproval,
    OnCallGate,
    Policy,
)
from bot.core.policy_file import load_policy, parse_policy

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "policy.yaml"

GOOD = """\
version: 1
provisioners:
  iam:
    type: webhook
    url: https://provisioner.example.com/ackgate
resources:
  - name: prod-db
    provisioner: iam
    max_duration: 4h
  - name: prod-k8s
groups:
  dbas: [dana@example.com]
flows:
  - name: incident-db
    resources: [prod-db]
    gate:
      type: acknowledged_incident
      services: [PABC123]
    approval:
      type: approvers
      groups: [dbas]
    default_duration: 1h
    max_duration: 2h
  - name: on-call
    resources: [prod-k8s]
    gate:
      type: on_call
      schedules: [PSCH789]
"""


def problems(text: str) -> list[str]:
    """The lines of the ConfigError the text produces (failing the test if it loads)."""
    with pytest.raises(ConfigError) as caught:
        parse_policy(textwrap.dedent(text), source="policy.yaml")
    return caught.value.message.splitlines()


def line_of(text: str, marker: str, nth: int = 1) -> int:
    """1-based number of the ``nth`` line containing ``marker``, so tests don't count by hand."""
    hits = [i for i, line in enumerate(textwrap.dedent(text).splitlines(), 1) if marker in line]
    return hits[nth - 1]


def only(text: str) -> str:
    [problem] = problems(text)
    return problem


# --- what loads -----------------------------------------------------------------------------


def test_example_policy_loads_and_covers_the_four_pagerduty_cases() -> None:
    policy = load_policy(EXAMPLE)
    flows = list(policy.flows)
    # access per ticket (and justification from the incident): an acknowledged incident grants
    assert any(isinstance(f.gate, AcknowledgedIncidentGate) and isinstance(f.approval, AutoApproval) for f in flows)
    # named approvers, two of whom must agree, in a channel
    assert any(isinstance(f.approval, ApproversApproval) and f.approval.required == 2 for f in flows)
    # delegated approval: whoever is on call for an escalation policy approves
    assert any(isinstance(f.approval, OnCallApproval) and f.approval.escalation_policy for f in flows)
    # automatic on-call access
    assert any(isinstance(f.gate, OnCallGate) and isinstance(f.approval, AutoApproval) for f in flows)
    assert {spec.type for spec in policy.provisioners.values()} == {"webhook", "noop"}
    assert policy.groups
    assert all("@example.com" in e for members in policy.groups.values() for e in members)


def test_a_valid_policy_loads_into_frozen_models() -> None:
    policy = parse_policy(GOOD)
    assert isinstance(policy, Policy)
    assert policy.flows[0].gate == AcknowledgedIncidentGate(type="acknowledged_incident", services=["PABC123"])
    assert [f.name for f in policy.flows_for("prod-k8s")] == ["on-call"]


def test_load_policy_names_the_file_it_read(tmp_path: Path) -> None:
    path = tmp_path / "ackgate-policy.yaml"
    path.write_text(GOOD.replace("type: on_call", "type: on_cal"), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    assert caught.value.message.startswith(f"{path}:{line_of(GOOD, 'type: on_call')}:")


def test_yaml_anchors_and_merge_keys_are_allowed_and_not_duplicates() -> None:
    text = GOOD + (
        "  - &base\n    name: base\n    resources: [prod-k8s]\n    max_duration: 3h\n  - <<: *base\n    name: derived\n"
    )
    policy = parse_policy(text)
    assert policy.flows[-1].name == "derived"
    assert policy.flows[-1].max_duration.total_seconds() == 3 * 3600


# --- one kind of mistake at a time ----------------------------------------------------------


def test_mistyped_gate_type_points_at_the_type_line_and_suggests_the_right_one() -> None:
    text = GOOD.replace("type: acknowledged_incident", "type: acknowleged_incident")
    line = line_of(text, "acknowleged_incident")
    assert only(text) == (
        f"policy.yaml:{line}:13: flows[0].gate.type: 'acknowleged_incident' is not one of none, "
        "acknowledged_incident, on_call. Did you mean 'acknowledged_incident'?"
    )


def test_bad_value_type_says_what_was_expected() -> None:
    text = GOOD.replace("      groups: [dbas]", "      groups: [dbas]\n      required: two")
    assert only(text) == (
        f"policy.yaml:{line_of(text, 'required: two')}:17: flows[0].approval.required: "
        "should be a whole number, not 'two'."
    )


def test_unknown_key_points_at_the_key_and_suggests_the_field() -> None:
    text = GOOD.replace("    default_duration: 1h", "    requestors:\n      anyone: true\n    default_duration: 1h")
    assert only(text) == (
        f"policy.yaml:{line_of(text, 'requestors')}:5: flows[0].requestors: unknown key 'requestors'. "
        "Did you mean 'requesters'?"
    )


def test_unknown_key_without_a_close_match_lists_the_allowed_keys() -> None:
    text = GOOD.replace("version: 1", "version: 1\ncolour: blue")
    assert only(text) == (
        "policy.yaml:2:1: colour: unknown key 'colour'. Allowed here: version, provisioners, resources, groups, flows."
    )


def test_unknown_resource_in_a_flow_points_at_that_list_item() -> None:
    text = GOOD.replace("resources: [prod-db]", "resources: [prod-dbb]")
    line = line_of(text, "prod-dbb")
    assert only(text) == (
        f"policy.yaml:{line}:17: flows[0].resources[0]: flow 'incident-db' names resource 'prod-dbb', which is "
        "not defined under resources: (defined: prod-db, prod-k8s). Did you mean 'prod-db'?"
    )


def test_unknown_group_points_at_the_group_and_suggests_a_defined_one() -> None:
    text = GOOD.replace("groups: [dbas]\n    default", "groups: [dba]\n    default")
    assert only(text) == (
        f"policy.yaml:{line_of(text, 'groups: [dba]')}:16: flows[0].approval.groups[0]: flow 'incident-db' names "
        "group 'dba', which is not defined under groups: (defined: dbas). Did you mean 'dbas'?"
    )


def test_unknown_requester_group_is_reported_too() -> None:
    text = GOOD.replace("    default_duration: 1h", "    requesters:\n      groups: [sre]\n    default_duration: 1h")
    problem = only(text)
    assert problem.startswith(f"policy.yaml:{line_of(text, 'groups: [sre]')}:16: flows[0].requesters.groups[0]:")
    assert "'sre', which is not defined under groups: (defined: dbas)." in problem


def test_unknown_provisioner_of_a_resource_is_reported_with_a_suggestion() -> None:
    text = GOOD.replace("provisioner: iam", "provisioner: iamm")
    assert only(text) == (
        f"policy.yaml:{line_of(text, 'iamm')}:18: resources[0].provisioner: resource 'prod-db' names provisioner "
        "'iamm', which is not defined under provisioners: (defined: iam, noop). Did you mean 'iam'?"
    )


def test_bad_duration_quotes_the_value_and_gives_examples() -> None:
    text = GOOD.replace("max_duration: 4h", "max_duration: 2x")
    assert only(text) == (
        f"policy.yaml:{line_of(text, '2x')}:19: resources[0].max_duration: “2x” is not a duration. "
        "Use a number and a unit, such as 30m, 2h or 1h30m."
    )


@pytest.mark.parametrize("value", ["8", "1:30", "2.5"])
def test_duration_without_a_unit_is_refused_rather_than_read_as_seconds(value: str) -> None:
    text = GOOD.replace("default_duration: 1h", f"default_duration: {value}")
    problem = only(text)
    assert problem.startswith(f"policy.yaml:{line_of(text, 'default_duration')}:23: flows[0].default_duration: ")
    assert "has no unit; write a duration such as 30m, 8h or 1h30m" in problem


def test_default_longer_than_max_points_at_default_duration() -> None:
    text = GOOD.replace("default_duration: 1h", "default_duration: 3h")
    assert only(text) == (
        f"policy.yaml:{line_of(text, 'default_duration')}:23: flows[0].default_duration: flow 'incident-db': "
        "default_duration (3h) is longer than max_duration (2h); shorten it or raise max_duration."
    )


def test_missing_required_field_points_at_its_parent_and_says_what_to_add() -> None:
    text = GOOD.replace("    resources: [prod-k8s]\n", "")
    assert only(text) == (
        f"policy.yaml:{line_of(text, 'name: on-call')}:5: flows[1].resources: is required but missing. "
        "Add `resources:` here."
    )


def test_missing_top_level_section_points_at_the_start() -> None:
    assert only("resources: []\n") == "policy.yaml:1:1: flows: is required but missing. Add `flows:` at the top level."


def test_missing_gate_type_lists_the_choices() -> None:
    text = GOOD.replace("      type: on_call\n", "")
    assert only(text) == (
        f"policy.yaml:{line_of(text, 'schedules: [PSCH789]')}:7: flows[1].gate.type: is missing. "
        "Add `type:` with one of none, acknowledged_incident, on_call."
    )


def test_literal_typo_suggests_the_allowed_value() -> None:
    text = GOOD.replace("services: [PABC123]", "services: [PABC123]\n      urgencies: [hgih]")
    assert only(text) == (
        f"policy.yaml:{line_of(text, 'hgih')}:19: flows[0].gate.urgencies[0]: 'hgih' is not one of high, low. "
        "Did you mean 'high'?"
    )


def test_model_rule_errors_point_at_the_object() -> None:
    text = GOOD.replace("    url: https://provisioner.example.com/ackgate\n", "")
    assert only(text) == (
        f"policy.yaml:{line_of(text, 'type: webhook')}:5: provisioners.iam: a webhook provisioner needs a url, "
        "such as https://provisioner.internal/ackgate."
    )


def test_a_value_failing_every_member_of_a_union_is_one_problem() -> None:
    text = GOOD.replace("    max_duration: 4h", "    max_duration: 4h\n    settings: {role: [a, b]}")
    assert only(text) == (
        f"policy.yaml:{line_of(text, 'settings')}:22: resources[0].settings.role: "
        "should be text or a whole number or true or false, not a list."
    )


def test_yaml_syntax_error_names_the_line() -> None:
    text = GOOD.replace("resources: [prod-db]", "resources: [prod-db")
    [problem] = problems(text)
    assert problem.startswith(f"policy.yaml:{line_of(text, 'gate:')}:")
    assert "invalid YAML: while parsing a flow sequence" in problem
    assert f"(the construct began on line {line_of(text, '[prod-db')})" in problem
    assert "Fix: check the indentation and quoting" in problem


def test_tabs_get_their_own_hint() -> None:
    assert only("flows:\n\t- name: x\n") == (
        "policy.yaml:2:1: invalid YAML: while scanning for the next token: found character '\\t' that cannot "
        "start any token. Fix: YAML does not allow tabs for indentation; use spaces."
    )


def test_duplicate_keys_are_refused_naming_both_lines() -> None:
    text = GOOD.replace("    default_duration: 1h", "    default_duration: 1h\n    default_duration: 30m")
    first = line_of(text, "default_duration")
    assert only(text) == (
        f"policy.yaml:{first + 1}:5: duplicate key 'default_duration' (first on line {first}). Keep only one."
    )


def test_two_documents_are_refused() -> None:
    assert "Fix: keep one document per policy file" in only(GOOD + "---\nversion: 1\n")


def test_empty_file_is_refused_with_a_pointer_to_the_example() -> None:
    assert only("# nothing yet\n") == (
        "policy.yaml:1:1: the file is empty. Add resources: and flows:; examples/policy.yaml is a commented "
        "starting point."
    )


def test_top_level_list_is_refused() -> None:
    assert only("- name: x\n").startswith("policy.yaml:1:1: the policy must be a mapping with resources: and flows:")


def test_missing_file_names_the_path_and_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    assert caught.value.message == (
        f"{path}: no such file. Point ACKGATE_POLICY_FILE at your policy YAML; examples/policy.yaml is a "
        "commented starting point."
    )


def test_a_directory_is_not_a_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory, not a file"):
        load_policy(tmp_path)


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("resources: []\nflows: []\n# café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"byte 29 is not UTF-8 text\. Save the file as UTF-8\."):
        load_policy(path)


# --- all at once ----------------------------------------------------------------------------


def test_every_field_error_is_reported_together_in_file_order() -> None:
    text = (
        GOOD.replace("max_duration: 4h", "max_duration: 2x")
        .replace("type: acknowledged_incident", "type: acknowleged_incident")
        .replace("    default_duration: 1h", "    requestors: {anyone: true}\n    default_duration: 1h")
        .replace("      schedules: [PSCH789]", "      schedules: [PSCH789]\n      max_escalation_level: 0")
    )
    found = problems(text)
    assert [p.split(":")[1] for p in found] == [
        str(line_of(text, "2x")),
        str(line_of(text, "acknowleged")),
        str(line_of(text, "requestors")),
        str(line_of(text, "max_escalation_level")),
    ]
    assert "Input should be greater than or equal to 1" in found[-1]


def test_every_reference_error_is_reported_together() -> None:
    text = (
        GOOD.replace("resources: [prod-db]", "resources: [prod-dbb]")
        .replace("groups: [dbas]\n    default", "groups: [dba]\n    default")
        .replace("resources: [prod-k8s]", "resources: [prod-k8ss]")
        .replace("name: on-call", "name: incident-db")
    )
    found = problems(text)
    assert len(found) == 4
    assert [int(p.split(":")[1]) for p in found] == sorted(int(p.split(":")[1]) for p in found)
    assert any("flow name 'incident-db' is used twice" in p for p in found)
    assert any("'prod-k8ss'" in p for p in found)


def test_duplicate_keys_and_field_errors_are_reported_together() -> None:
    text = GOOD.replace("version: 1", "version: 1\nversion: 1").replace("max_duration: 4h", "max_duration: 2x")
    found = problems(text)
    assert len(found) == 2
    assert "duplicate key 'version'" in found[0]
    assert "“2x” is not a duration" in found[1]


def test_constructing_a_policy_directly_reports_all_reference_problems() -> None:
    """The schema, used without the loader, still names every broken reference in one error."""
    with pytest.raises(ValueError, match=r"resource 'nope'.*; .*group 'ghosts'"):
        Policy.model_validate(
            {
                "resources": [{"name": "db"}],
                "flows": [
                    {"name": "a", "resources": ["nope"]},
                    {"name": "b", "resources": ["db"], "approval": {"type": "approvers", "groups": ["ghosts"]}},
                ],
            }
        )


def test_a_provisioner_may_not_take_the_builtin_noop_name_for_a_webhook() -> None:
    text = GOOD.replace("  iam:\n", "  noop:\n").replace("provisioner: iam", "provisioner: noop")
    assert "the name 'noop' is reserved" in only(text)


def test_provisioner_timeout_must_be_positive() -> None:
    text = GOOD.replace("/ackgate\n", "/ackgate\n    timeout_seconds: 0\n", 1)
    assert only(text) == (
        f"policy.yaml:{line_of(text, 'timeout_seconds')}:22: provisioners.iam.timeout_seconds: "
        "Input should be greater than 0."
    )


def test_provisioner_url_must_be_http() -> None:
    text = GOOD.replace("https://provisioner.example.com/ackgate", "provisioner.example.com")
    assert only(text) == (
        "policy.yaml:4:5: provisioners.iam: url 'provisioner.example.com' must start with https:// "
        "(or http:// inside a private network)."
    )
