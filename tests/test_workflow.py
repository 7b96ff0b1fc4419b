"""The workflow state machine alone: no sockets, no clock."""

from __future__ import annotations

import pytest

from interlook_core.entry import DEPLOYED, UNDEPLOYED, Entry
from interlook_core.service import service_from_wire
from interlook_core.workflow import Workflow, WorkflowTimings

STEPS = ["provider.test", "ipam.file", "dns.x", "lb.y"]


def service(name="web", port=80, **extra):
    raw = {"name": name, "targets": [{"host": "10.0.0.5", "port": port}], **extra}
    return service_from_wire(raw, provider="provider.test")


def make(**timings):
    return Workflow(STEPS, WorkflowTimings(**timings))


def run_to_end(flow, name, now=0.0, changes=None):
    """Answer every request for ``name`` with success until it settles."""
    seen = []
    for _ in range(20):
        request = flow.next_request(flow.entries[name], now)
        if request is None:
            return seen
        seen.append((request.step, request.action))
        flow.apply_result(
            request.request_id, True, None, (changes or {}).get(request.step), now
        )
    raise AssertionError("did not settle")


def test_new_service_starts_at_the_provider_step_not_in_progress():
    flow = make()
    entry = flow.upsert(service(), 1.0)
    assert entry.state == "provider.test"
    assert entry.expected_state == DEPLOYED
    assert not entry.work_in_progress
    assert "web" in flow.dirty


def test_deploy_runs_every_step_in_order_then_is_deployed():
    flow = make()
    flow.upsert(service(), 0)
    steps = run_to_end(flow, "web", changes={"ipam.file": {"public_ip": "10.1.0.1"}})
    assert steps == [("ipam.file", "deploy"), ("dns.x", "deploy"), ("lb.y", "deploy")]
    entry = flow.entries["web"]
    assert entry.state == DEPLOYED
    assert entry.service.public_ip == "10.1.0.1"
    assert "web" not in flow.unsettled


def test_the_entry_is_in_progress_while_its_step_is_out():
    flow = make()
    flow.upsert(service(), 0)
    request = flow.next_request(flow.entries["web"], 5.0)
    entry = flow.entries["web"]
    assert (
        entry.work_in_progress
        and entry.wip_step == "ipam.file"
        and entry.wip_time == 5.0
    )
    assert flow.next_request(entry, 6.0) is None
    flow.apply_result(request.request_id, True, None, {}, 7.0)
    assert entry.state == "ipam.file" and not entry.work_in_progress


def test_undeploy_runs_the_steps_backwards_to_undeployed():
    flow = make()
    flow.upsert(service(), 0)
    run_to_end(flow, "web", changes={"ipam.file": {"public_ip": "10.1.0.1"}})
    flow.remove("web", 1)
    steps = run_to_end(flow, "web", 1, changes={"ipam.file": {"public_ip": None}})
    assert steps == [
        ("lb.y", "undeploy"),
        ("dns.x", "undeploy"),
        ("ipam.file", "undeploy"),
    ]
    entry = flow.entries["web"]
    assert entry.state == UNDEPLOYED and entry.close_time == 1
    assert entry.service.public_ip is None


def test_removal_before_any_step_closes_without_steps():
    flow = make()
    flow.upsert(service(), 0)
    flow.remove("web", 2)
    assert flow.entries["web"].state == UNDEPLOYED
    assert flow.next_request(flow.entries["web"], 3) is None


def test_a_step_whose_reply_never_came_is_still_undone():
    flow = make(wip_timeout=1, max_resends=0)
    flow.upsert(service(), 0)
    request = flow.next_request(flow.entries["web"], 0)
    flow.mark_sent(request.request_id, 0)
    resend, failed = flow.overdue(10)
    assert resend == [] and failed == [request.request_id]
    flow.remove("web", 11)
    steps = run_to_end(flow, "web", 11)
    # ipam.file may have allocated before its reply was lost: undo it.
    assert steps == [("ipam.file", "undeploy")]
    assert flow.entries["web"].state == UNDEPLOYED


def test_a_changed_definition_reruns_every_step():
    flow = make()
    flow.upsert(service(), 0)
    run_to_end(flow, "web", changes={"ipam.file": {"public_ip": "10.1.0.1"}})
    flow.upsert(service(port=81), 1)
    entry = flow.entries["web"]
    assert entry.state == "provider.test"
    assert entry.service.public_ip == "10.1.0.1", "the IP is kept across definitions"
    steps = run_to_end(flow, "web", 1)
    assert [s for s, _ in steps] == ["ipam.file", "dns.x", "lb.y"]
    assert entry.service.targets[0].port == 81


def test_an_unchanged_definition_reruns_nothing():
    flow = make()
    flow.upsert(service(), 0)
    run_to_end(flow, "web")
    flow.upsert(service(), 5)
    assert flow.entries["web"].state == DEPLOYED
    assert flow.entries["web"].last_update == 5


def test_a_change_during_a_step_reruns_from_the_start_after_its_reply():
    flow = make()
    flow.upsert(service(), 0)
    first = flow.next_request(flow.entries["web"], 0)
    flow.apply_result(first.request_id, True, None, {}, 0)
    second = flow.next_request(flow.entries["web"], 0)
    assert second.step == "dns.x"
    flow.upsert(service(port=82), 1)
    flow.apply_result(second.request_id, True, None, {}, 2)
    entry = flow.entries["web"]
    assert entry.state == "provider.test", "the step saw the old definition"
    assert [s for s, _ in run_to_end(flow, "web", 3)] == ["ipam.file", "dns.x", "lb.y"]


def test_a_late_or_duplicate_reply_is_ignored():
    flow = make()
    flow.upsert(service(), 0)
    request = flow.next_request(flow.entries["web"], 0)
    assert flow.apply_result(request.request_id, True, None, {}, 1) is not None
    assert flow.apply_result(request.request_id, True, None, {}, 2) is None
    assert flow.apply_result("no-such-id", True, None, {}, 2) is None
    assert flow.entries["web"].state == "ipam.file"


def test_a_reply_from_another_step_is_ignored():
    flow = make()
    flow.upsert(service(), 0)
    request = flow.next_request(flow.entries["web"], 0)
    assert (
        flow.apply_result(request.request_id, True, None, {}, 1, sender="dns.x") is None
    )
    assert flow.entries["web"].work_in_progress


def test_only_an_ipam_step_may_set_public_ip():
    flow = make()
    flow.upsert(service(), 0)
    run_to_end(flow, "web", changes={"dns.x": {"public_ip": "10.9.9.9"}})
    assert flow.entries["web"].service.public_ip is None


def test_a_failed_step_records_the_error_and_retries_with_backoff():
    flow = make(retry_base=1, retry_cap=4)
    flow.upsert(service(), 0)
    delays = []
    for attempt in range(4):
        now = 100.0 * attempt
        request = flow.next_request(flow.entries["web"], now)
        flow.apply_result(request.request_id, False, "pool exhausted", None, now)
        delays.append(flow.entries["web"].next_retry - now)
    entry = flow.entries["web"]
    assert delays == [1, 2, 4, 4]
    assert entry.error == "ipam.file deploy: pool exhausted"
    assert flow.next_request(entry, entry.next_retry - 0.1) is None
    request = flow.next_request(entry, entry.next_retry)
    flow.apply_result(request.request_id, True, None, {}, entry.next_retry)
    assert entry.error is None and entry.state == "ipam.file"


def test_an_undeploy_wakes_entries_that_failed_at_that_step():
    flow = make(retry_base=60)
    flow.upsert(service("a"), 0)
    request = flow.next_request(flow.entries["a"], 0)
    flow.apply_result(request.request_id, False, "no free IP", None, 0)
    assert flow.entries["a"].next_retry == 60
    assert flow.wake_errors_at("ipam.file") == 1
    assert flow.next_request(flow.entries["a"], 1) is not None


def test_an_overdue_step_is_resent_with_the_same_id_then_fails():
    flow = make(wip_timeout=10, max_resends=2)
    flow.upsert(service(), 0)
    request = flow.next_request(flow.entries["web"], 0)
    flow.mark_sent(request.request_id, 0)
    assert flow.overdue(9) == ([], [])
    resend, _ = flow.overdue(10)
    assert [r.request_id for r in resend] == [request.request_id]
    flow.mark_sent(request.request_id, 10)
    assert flow.overdue(29) == ([], []), "the second wait is twice as long"
    resend, _ = flow.overdue(30)
    flow.mark_sent(request.request_id, 30)
    resend, failed = flow.overdue(70)
    assert failed == [request.request_id]
    entry = flow.entries["web"]
    assert "no reply after 3 attempts" in entry.error
    assert not entry.work_in_progress and entry.next_retry is not None


def test_a_snapshot_undeploys_what_it_no_longer_lists():
    flow = make()
    flow.snapshot("provider.test", [service("a"), service("b")], 0)
    gone = flow.snapshot("provider.test", [service("a")], 1)
    assert gone == ["b"]
    assert flow.entries["b"].expected_state == UNDEPLOYED
    assert flow.entries["a"].expected_state == DEPLOYED


def test_a_service_back_after_removal_deploys_again():
    flow = make()
    flow.upsert(service(), 0)
    run_to_end(flow, "web")
    flow.remove("web", 1)
    run_to_end(flow, "web", 1)
    flow.upsert(service(), 2)
    entry = flow.entries["web"]
    assert entry.expected_state == DEPLOYED and entry.close_time is None
    run_to_end(flow, "web", 2)
    assert entry.state == DEPLOYED


def test_undeployed_entries_are_cleaned_after_the_delay():
    flow = make(clean_undeployed_after=60)
    flow.upsert(service(), 0)
    flow.remove("web", 10)
    flow.take_changes()
    assert flow.expired(69) == []
    assert flow.expired(71) == ["web"]
    assert "web" not in flow.entries
    assert flow.take_changes() == ([], ["web"])


def test_stale_deployed_entries_are_refreshed_once_per_period():
    flow = make(max_last_updated=90)
    flow.upsert(service(), 0)
    run_to_end(flow, "web")
    assert flow.stale(50) == []
    assert flow.stale(91) == ["web"]
    assert flow.stale(100) == []
    assert flow.stale(182) == ["web"]
    flow.upsert(service(), 183)
    assert flow.stale(200) == []


def test_entries_survive_a_record_round_trip_with_their_step_in_progress():
    flow = make()
    flow.upsert(service(dns_names=["a.example.test"]), 0)
    request = flow.next_request(flow.entries["web"], 0)
    record = flow.entries["web"].to_record()
    restored = make()
    restored.load([Entry.from_record(record)])
    entry = restored.entries["web"]
    assert entry.work_in_progress and entry.request_id == request.request_id
    assert restored.pending == {request.request_id: "web"}
    assert entry.service == flow.entries["web"].service
    assert restored.apply_result(request.request_id, True, None, {}, 1) is entry


def test_an_entry_at_a_step_no_longer_in_the_workflow_is_rerun():
    flow = make()
    flow.upsert(service(), 0)
    record = flow.entries["web"].to_record()
    record["state"] = "lb.removed"
    restored = make()
    restored.load([Entry.from_record(record)])
    entry = restored.entries["web"]
    assert entry.state == "provider.test" and entry.reach == len(STEPS) - 1


@pytest.mark.parametrize("steps", [["provider.a"], []])
def test_a_workflow_needs_a_provider_and_a_provisioner(steps):
    with pytest.raises(ValueError):
        Workflow(steps)


def test_a_shorter_workflow_keeps_undeploy_within_its_steps():
    flow = make()
    flow.upsert(service(), 0)
    run_to_end(flow, "web")
    record = flow.entries["web"].to_record()
    shorter = Workflow(STEPS[:2])
    shorter.load([Entry.from_record(record)], workflow_changed=True)
    shorter.remove("web", 1)
    assert run_to_end(shorter, "web", 1) == [("ipam.file", "undeploy")]


def test_a_longer_workflow_runs_the_new_step_for_deployed_entries():
    short = Workflow(STEPS[:2])
    short.upsert(service(), 0)
    run_to_end(short, "web")
    longer = make()
    longer.load(
        [Entry.from_record(short.entries["web"].to_record())], workflow_changed=True
    )
    assert [s for s, _ in run_to_end(longer, "web", 1)] == [
        "ipam.file",
        "dns.x",
        "lb.y",
    ]


def test_a_provider_cannot_set_the_public_ip():
    flow = make()
    entry = flow.upsert(service(public_ip="10.9.9.9"), 0)
    assert entry.service.public_ip is None


def test_a_changed_workflow_drops_the_step_in_progress_and_undoes_from_the_end():
    flow = make()
    flow.upsert(service(), 0)
    run_to_end(flow, "web")
    flow.remove("web", 1)
    request = flow.next_request(flow.entries["web"], 1)
    assert (request.step, request.action) == ("lb.y", "undeploy")
    reordered = Workflow(["provider.test", "dns.x", "ipam.file", "lb.y"])
    reordered.load([Entry.from_record(flow.entries["web"].to_record())], True)
    assert reordered.apply_result(request.request_id, True, None, {}, 2) is None
    steps = run_to_end(reordered, "web", 2)
    assert steps == [
        ("lb.y", "undeploy"),
        ("ipam.file", "undeploy"),
        ("dns.x", "undeploy"),
    ]


def test_a_deploy_in_progress_across_a_workflow_change_is_done_again():
    flow = make()
    flow.upsert(service(), 0)
    request = flow.next_request(flow.entries["web"], 0)
    longer = Workflow([*STEPS, "cdn.z"])
    longer.load([Entry.from_record(flow.entries["web"].to_record())], True)
    entry = longer.entries["web"]
    assert not entry.work_in_progress and entry.state == "provider.test"
    assert longer.apply_result(request.request_id, True, None, {}, 1) is None
    assert [s for s, _ in run_to_end(longer, "web", 1)] == [*STEPS[1:], "cdn.z"]
