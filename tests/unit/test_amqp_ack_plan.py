"""The batched-ack plan: one multiple ack only as far as no foreign unsettled tag lies below."""

from __future__ import annotations

from shared.transport.amqp_batch import ack_plan


def test_a_batch_that_is_all_the_channel_holds_is_one_multiple_ack():
    assert ack_plan([3, 1, 2], unsettled=[1, 2, 3]) == (3, [])


def test_a_single_tag_is_acked_alone():
    assert ack_plan([5], unsettled=[5, 9]) == (None, [5])


def test_the_multiple_ack_stops_below_a_tag_that_is_not_in_the_batch():
    # 4 is buffered or held elsewhere: acking 6 with multiple=True would ack it too
    assert ack_plan([1, 2, 3, 5, 6], unsettled=[1, 2, 3, 4, 5, 6, 7]) == (3, [5, 6])


def test_a_foreign_tag_below_the_whole_batch_leaves_only_single_acks():
    assert ack_plan([7, 8, 9], unsettled=[2, 7, 8, 9]) == (None, [7, 8, 9])


def test_tags_already_gone_from_the_channel_do_not_bound_the_plan():
    assert ack_plan([10, 11], unsettled=[]) == (11, [])
