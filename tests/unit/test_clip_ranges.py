"""What an event's clip covers, and which export ranges are refused, in words."""

from __future__ import annotations

import math

import pytest

from rtdetr_service.outputs.recordings.clips import clip_range, export_range_problem

NOW = 1_700_000_000.0


def test_an_ended_event_is_widened_by_its_pre_and_post_roll():
    assert clip_range(NOW - 100, NOW - 60, NOW, 5.0, 7.0) == (NOW - 105, NOW - 53)


def test_a_live_event_runs_to_the_newest_segment():
    assert clip_range(NOW - 30, None, NOW - 2, 5.0, 5.0) == (NOW - 35, NOW - 2)


def test_a_live_event_younger_than_the_newest_segment_still_has_a_range():
    start, end = clip_range(NOW, None, NOW - 4, 5.0, 5.0)
    assert start < end


def test_a_sane_export_range_passes():
    assert export_range_problem(NOW - 600, NOW - 60, 3600, NOW) is None
    assert export_range_problem(NOW - 60, NOW + 60, 3600, NOW) is None  # up to now and a bit: what there is


@pytest.mark.parametrize(
    "after, before, words",
    [
        (NOW - 60, NOW - 600, "must be later than after"),
        (NOW - 60, NOW - 60, "must be later than after"),
        (NOW + 60, NOW + 600, "in the future"),
        (NOW - 7200, NOW, "at most 3600 s"),
        (-5.0, NOW, "Unix time in seconds"),
        (math.nan, NOW, "Unix time in seconds"),
        (NOW - 60, math.inf, "Unix time in seconds"),
        ((NOW - 60) * 1000, NOW * 1000, "not milliseconds"),
    ],
    ids=["reversed", "empty", "future", "too-long", "negative", "nan", "infinite", "milliseconds"],
)
def test_a_bad_export_range_is_refused_in_words(after, before, words):
    assert words in export_range_problem(after, before, 3600, NOW)
