"""A model's verdict is believed only after the schema check: JSON in prose or fences is found, a
score out of range or a wrong answer word is not a verdict, and the words are kept either way."""

from rtdetr_service.core.vlm import parse_verdict


def test_a_verdict_wrapped_in_prose_and_a_code_fence_is_found():
    text = 'Sure!\n```json\n{"answer": "yes", "score": 0.82, "reason": "A bag is left by the door."}\n```'
    verdict = parse_verdict(text)
    assert (verdict.answer, verdict.score, verdict.reason) == ("yes", 0.82, "A bag is left by the door.")


def test_the_first_object_that_passes_the_schema_wins():
    text = '{"note": 1} then {"answer": "maybe", "score": 0.5} then {"answer": "no", "score": 0.1, "reason": "empty"}'
    verdict = parse_verdict(text)
    assert (verdict.answer, verdict.score, verdict.reason) == ("no", 0.1, "empty")


def test_a_score_out_of_range_is_not_believed():
    verdict = parse_verdict('{"answer": "yes", "score": 7, "reason": "sure"}')
    assert verdict.answer is None and verdict.score is None
    assert verdict.reason.startswith('{"answer"')


def test_an_answer_without_a_score_scores_by_its_word():
    assert parse_verdict('{"answer": "no"}').score == 0.0
    assert parse_verdict('{"answer": "yes"}').score == 1.0


def test_plain_words_are_kept_bounded_without_a_verdict():
    verdict = parse_verdict("<img src=x onerror=alert(1)> " + "x" * 5000, max_chars=100)
    assert verdict.answer is None and verdict.score is None
    assert len(verdict.reason) == 100
