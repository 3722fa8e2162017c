"""The collect rule on its own: every branch, with elapsed time given explicitly."""

import pytest

from services.aggregator.collect import CollectAction, CollectRule, decide


def test_a_round_closes_as_soon_as_every_sampled_client_uploaded():
    # Given a round of 4 clients that all uploaded, long before the deadline
    rule = CollectRule(sampled=4, min_quorum=1.0, timeout_s=600)
    # When / Then
    assert decide(rule, received=4, elapsed_s=1.0, stop=False) is CollectAction.CLOSE


def test_a_complete_round_closes_even_when_a_stop_was_requested():
    rule = CollectRule(sampled=2, min_quorum=1.0, timeout_s=600)
    assert decide(rule, received=2, elapsed_s=1.0, stop=True) is CollectAction.CLOSE


def test_before_the_deadline_an_incomplete_round_waits():
    rule = CollectRule(sampled=4, min_quorum=0.5, timeout_s=60)
    assert decide(rule, received=3, elapsed_s=59.999, stop=False) is CollectAction.WAIT


def test_a_stop_request_leaves_an_incomplete_round_open():
    rule = CollectRule(sampled=4, min_quorum=0.5, timeout_s=60)
    assert decide(rule, received=3, elapsed_s=10.0, stop=True) is CollectAction.STOP
    assert decide(rule, received=3, elapsed_s=100.0, stop=True) is CollectAction.STOP


def test_at_the_deadline_a_round_with_the_minimum_quorum_closes_with_what_it_has():
    rule = CollectRule(sampled=4, min_quorum=0.5, timeout_s=60)
    action = decide(rule, received=2, elapsed_s=60.0, stop=False)
    assert action is CollectAction.CLOSE_AT_DEADLINE
    assert action.closes


def test_at_the_deadline_without_the_minimum_quorum_the_missing_tasks_are_republished():
    rule = CollectRule(sampled=4, min_quorum=0.75, timeout_s=60)
    action = decide(rule, received=2, elapsed_s=60.0, stop=False, republished=0)
    assert action is CollectAction.REPUBLISH
    assert not action.closes


def test_after_a_republication_the_round_is_overdue_until_the_next_period_ends():
    rule = CollectRule(sampled=4, min_quorum=0.75, timeout_s=60)
    assert decide(rule, 2, 61.0, stop=False, republished=1) is CollectAction.OVERDUE
    assert decide(rule, 2, 119.9, stop=False, republished=1) is CollectAction.OVERDUE
    assert decide(rule, 2, 120.0, stop=False, republished=1) is CollectAction.REPUBLISH
    assert decide(rule, 2, 150.0, stop=False, republished=2) is CollectAction.OVERDUE


def test_a_full_minimum_quorum_never_closes_early_at_the_deadline():
    rule = CollectRule(sampled=3, min_quorum=1.0, timeout_s=1)
    for republished in range(5):
        action = decide(rule, received=2, elapsed_s=1e9, stop=False, republished=republished)
        assert not action.closes


@pytest.mark.parametrize(
    ("sampled", "min_quorum", "needed"),
    [(10, 0.5, 5), (10, 0.51, 6), (3, 0.01, 1), (1, 1.0, 1), (7, 1.0, 7)],
)
def test_the_minimum_quorum_rounds_up_and_is_at_least_one(sampled, min_quorum, needed):
    assert CollectRule(sampled, min_quorum, 60).needed == needed


def test_only_close_actions_close():
    assert {a for a in CollectAction if a.closes} == {
        CollectAction.CLOSE,
        CollectAction.CLOSE_AT_DEADLINE,
    }
