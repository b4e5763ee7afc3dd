"""The fusion of a search by words' two rankings (what was seen, what was said) by reciprocal rank
fusion, with known ranks: only the order within each list counts, never the raw cosines."""

from __future__ import annotations

import pytest

from rtdetr_service.core.search import SearchHit
from rtdetr_service.outputs.store.vectors import RRF_K, fuse


def hits(*ids_scores: tuple[str, float]) -> list[SearchHit]:
    return [SearchHit(event_id, score) for event_id, score in ids_scores]


def test_an_event_both_rankings_found_outranks_one_found_by_one_side_at_the_same_rank():
    # Given "both" second in each list, "seen" first by image only, "said" first by description only
    image = hits(("seen", 0.31), ("both", 0.30), ("img-3", 0.10))
    text = hits(("said", 0.95), ("both", 0.90), ("txt-3", 0.80))
    fused = fuse(image, text)
    # Then "both" comes first: 1/62 + 1/62 beats 1/61
    assert [hit.event_id for hit in fused][:3] == ["both", "said", "seen"]
    best = 2 / (RRF_K + 1)
    assert fused[0].score == pytest.approx((2 / (RRF_K + 2)) / best)
    assert fused[1].score == pytest.approx((1 / (RRF_K + 1)) / best) == pytest.approx(0.5)
    # and each side's cosine is kept as it was, null where that side did not find the event
    by_id = {hit.event_id: hit for hit in fused}
    assert (by_id["both"].image_score, by_id["both"].text_score) == (0.30, 0.90)
    assert (by_id["seen"].image_score, by_id["seen"].text_score) == (0.31, None)
    assert (by_id["said"].image_score, by_id["said"].text_score) == (None, 0.95)


def test_raw_scores_never_decide_only_ranks_do():
    # Text–text cosines run far higher than image–text ones: a max of raw scores would put every
    # described event above every seen one. Fused, first by image ties first by description.
    fused = fuse(hits(("a", 0.05), ("b", 0.04)), hits(("c", 0.99), ("d", 0.98)))
    assert [hit.event_id for hit in fused] == ["a", "c", "b", "d"]  # ties by event id
    assert fused[0].score == fused[1].score and fused[2].score == fused[3].score
    # and scaled raw scores change nothing
    scaled = fuse(hits(("a", 0.5), ("b", 0.4)), hits(("c", 9.9), ("d", 9.8)))
    assert [hit.event_id for hit in scaled] == ["a", "c", "b", "d"]


def test_the_first_in_both_lists_scores_one_and_one_list_alone_keeps_its_order():
    fused = fuse(hits(("x", 0.2), ("y", 0.1)), hits(("x", 0.7)))
    assert fused[0].event_id == "x" and fused[0].score == pytest.approx(1.0)
    alone = fuse(hits(("p", 0.3), ("q", 0.2), ("r", 0.1)), [])
    assert [hit.event_id for hit in alone] == ["p", "q", "r"]
    assert fuse([], []) == []
    with pytest.raises(ValueError):
        fuse([], [], k=0)
