"""The history checker: every anomaly found, named by id, and explained from the events."""

from chaos import History


def history(*specs: tuple[str, str, bool]) -> History:
    h = History()
    for i, (mid, key, acked) in enumerate(specs):
        h.submitted(mid, key, acked=acked, mono=10.0 + i)
    return h


def test_a_clean_run_is_ok() -> None:
    h = history(("a1", "a", True), ("a2", "a", True), ("b1", "b", True))
    verdict = h.check({"a": ["a1", "a2"], "b": ["b1"]})
    assert verdict.ok and verdict.summary() == (
        "lost=0 duplicated=0 reordered=0 unexpected=0 dead_lettered=0"
    )
    assert (verdict.submitted, verdict.committed) == (3, 3)


def test_a_target_that_promises_no_order_is_not_judged_on_it() -> None:
    h = history(("a1", "a", True), ("a2", "a", True), ("a3", "a", True))
    committed = {"a": ["a2", "a1", "a3", "a3"]}
    assert h.check(committed).reordered == ["a1"]
    unordered = h.check(committed, ordered=False)
    assert unordered.reordered == [] and unordered.duplicated == ["a3"]  # the rest still counts


def test_each_anomaly_is_found_with_its_ids() -> None:
    h = history(*[(f"a{i}", "a", True) for i in range(6)], ("b1", "b", True), ("b2", "b", False))
    committed = {"a": ["a0", "a3", "a1", "a2", "a3", "x9"], "b": ["b1", "a5"]}
    verdict = h.check(committed, dead_lettered=["a4"], expected_dead={"a4": None})
    assert verdict.lost == ["a5"]  # a4 was dead-lettered, as expected; b2 was never acknowledged
    assert verdict.duplicated == ["a3"]
    assert verdict.reordered == ["a1", "a2"]  # committed after a3, submitted after them
    assert verdict.explanations["a1"].startswith("a1: committed after a3, which was submitted")
    assert verdict.unexpected == ["a:x9", "b:a5"]  # never submitted; under another key
    assert (verdict.dead_lettered, verdict.expected_dead) == ([], ["a4"])
    assert not verdict.ok
    assert verdict.details()[0] == "lost: a5"


def test_a_retry_requeued_at_the_back_names_the_ids_that_moved() -> None:
    """A worker died holding a1..a4; the pool sent a5, a6 first and the retries after them:
    the ids that moved (came late) are named, not the ones that kept their place."""
    h = history(*[(f"a{i}", "a", True) for i in range(7)])
    verdict = h.check({"a": ["a0", "a5", "a6", "a1", "a2", "a3", "a4"]})
    assert verdict.reordered == ["a1", "a2", "a3", "a4"]
    assert "committed after a6" in verdict.explanations["a1"]


def test_dead_letters_are_accounted_not_forgiven() -> None:
    h = history(("a1", "a", True), ("a2", "a", True), ("a3", "a", True))
    # Dead-lettered without the scenario expecting it: an anomaly, not "recovered".
    verdict = h.check({"a": ["a1"]}, dead_lettered={"a2": "worker died", "a3": "poison"})
    assert verdict.dead_lettered == ["a2", "a3"] and not verdict.lost and not verdict.ok
    assert "not named as expected" in verdict.explanations["a2"]
    # Expected, with the expected reason: accounted; with another reason: an anomaly.
    expected = {"a2": "ValueError", "a3": "poison"}
    verdict = h.check({"a": ["a1"]}, {"a2": "worker died", "a3": "poison: 3 deaths"}, (), expected)
    assert (verdict.dead_lettered, verdict.expected_dead) == (["a2"], ["a3"])
    assert "expected /ValueError/" in verdict.explanations["a2"]
    # Expected but neither dead-lettered nor committed: lost.
    assert h.check({"a": ["a1", "a2"]}, expected_dead={"a3": None}).lost == ["a3"]


def test_an_unacknowledged_submit_may_commit_or_not() -> None:
    h = history(("a1", "a", False), ("a2", "a", False))
    assert h.check({"a": ["a2"]}).ok


def test_anomalies_are_explained_by_what_happened_after_them() -> None:
    h = history(("a1", "a", True), ("a2", "a", True))
    events = [
        {"kind": "checkpointed", "mono": 10.5, "worker": 0, "pid": 7},
        {
            "kind": "died",
            "mono": 11.5,
            "worker": 0,
            "pid": 7,
            "signal": "SIGKILL(-9)",
            "inflight": 12,
        },
        {"kind": "restarted", "mono": 11.6, "worker": 0, "pid": 8},
    ]
    verdict = h.check({"a": ["a1"]}, events=events)
    assert verdict.lost == ["a2"]
    assert verdict.explanations["a2"] == (
        "a2: worker 0 (pid 7) died +0.500 s after it was submitted (SIGKILL(-9)), "
        "12 messages in flight"
    )
    quiet = history(("a1", "a", True)).check({"a": []})
    assert "no fault after it was submitted" in quiet.explanations["a1"]
    # An event-less target: the fault before the message is named beside "no fault after".
    late = history(("a1", "a", True))
    kill = {"kind": "fault", "mono": late.submits[0].mono - 0.25, "pid": 9, "reason": "kill"}
    said = late.check({"a": []}, events=[kill]).explanations["a1"]
    assert said.endswith("(the last fault before it: pid 9 got kill, 0.250 s earlier)"), said
    # A fault aimed at no one pid (a process group) is named by what it aimed at.
    group = history(("a1", "a", True))
    whole = {"kind": "fault", "mono": group.submits[0].mono + 0.5, "pid": None,
             "target": "process group 42", "reason": "kill (SIGKILL)"}  # fmt: skip
    said = group.check({"a": []}, events=[whole]).explanations["a1"]
    assert said.startswith("a1: process group 42 got kill (SIGKILL) +0.500 s after"), said
