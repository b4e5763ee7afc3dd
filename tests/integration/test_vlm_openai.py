"""The `openai` VLM provider against a real chat-completions server on 127.0.0.1 (tests/chat_server.py),
scripted per key: which key takes each request (round robin, priority), a 429 that rests a key for its
Retry-After while another answers, a 401 that disables a key for good, 5xx retried and 4xx not, a
stalled or trickling server cut at VLM_TIMEOUT_S, the QPS limit as the server counts it, POST /ask's
share of the keys, and no key in any status or log line."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest

from rtdetr_service.core.vlm import VlmAnswer, VlmError, VlmRequest
from rtdetr_service.inference.settings import VlmSettings
from rtdetr_service.inference.vlm.openai import OpenAiVlm, from_settings

from chat_server import (
    ANONYMOUS,
    OK,
    ChatServer,
    Reply,
    bad_request,
    refused,
    server_error,
    too_many,
)
from support import wait_until

KEYS = ("sk-test-alpha-7f3a9c21d4e8b6", "sk-test-bravo-2b8e4f61a9c3d7", "sk-test-charlie-5d1c7a93e2f4")
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 60 + b"\xff\xd9"  # what the provider checks: a JPEG's start


@pytest.fixture(autouse=True)
def no_key_in_any_line(caplog):
    """Every test: whatever the provider or its libraries logged, at any level, holds no key."""
    caplog.set_level("DEBUG")
    yield
    for key in KEYS:
        assert key not in caplog.text
        assert key[8:20] not in caplog.text


@pytest.fixture
def providers():
    made: list[OpenAiVlm] = []

    def make(server: ChatServer, keys=KEYS, **values) -> OpenAiVlm:
        values.setdefault("vlm_timeout_s", 10.0)
        settings = VlmSettings(
            vlm_provider="openai",
            vlm_model="test-vlm",
            vlm_base_url=server.base_url,
            vlm_api_keys=",".join(k for k in keys if k),
            **values,
        )
        provider = OpenAiVlm(settings, backoff_s=0.01, backoff_max_s=0.05)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


def ask(provider: OpenAiVlm, prompt: str = "describe this", purpose="describe", images=(JPEG,)):
    [result] = provider.generate([VlmRequest(prompt, tuple(images), purpose)])
    return result


def shown(provider: OpenAiVlm) -> str:
    return json.dumps(provider.status())


def assert_no_key(text: str) -> None:
    for key in KEYS:
        assert key not in text


# -- what is sent and what comes back ------------------------------------------------------------------


def test_a_request_is_a_chat_completion_with_the_images_as_data_urls_and_the_answer_is_its_content(providers):
    with ChatServer(KEYS) as server:
        server.script(KEYS[0], Reply(text="A person at the gate.\x00\x07"))
        provider = providers(server, vlm_max_tokens=77)
        answer = ask(provider, "describe this", images=(JPEG, JPEG))

        assert isinstance(answer, VlmAnswer)
        assert answer.text == "A person at the gate."  # control characters dropped
        assert (answer.key, answer.model_id) == ("key-1", "test-vlm")
        [seen] = server.seen
        assert seen.path == "/v1/chat/completions"
        assert seen.body["model"] == "test-vlm" and seen.body["max_tokens"] == 77
        [message] = seen.body["messages"]
        assert message["role"] == "user"
        text, *images = message["content"]
        assert text == {"type": "text", "text": "describe this"}
        assert [part["type"] for part in images] == ["image_url", "image_url"]
        assert images[0]["image_url"]["url"].startswith("data:image/jpeg;base64,/9j/")


def test_content_as_a_list_of_parts_is_joined_and_every_answer_is_cut_to_its_bound(providers):
    parts = [{"type": "text", "text": "Two cars"}, {"type": "image_url"}, {"type": "text", "text": " and a van."}]
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": parts}}]}).encode()
    with ChatServer(KEYS) as server:
        server.script(KEYS[0], Reply(body=body), Reply(text="x" * 5000))
        provider = providers(server, vlm_answer_max_chars=100, vlm_key_strategy="priority")
        assert ask(provider).text == "Two cars and a van."
        long = ask(provider)
        assert long.text == "x" * 100


def test_an_answer_that_is_not_a_chat_completion_is_an_error_in_words_not_retried(providers):
    with ChatServer(KEYS) as server:
        server.script(KEYS[0], Reply(body=b'{"choices": []}'), Reply(body=b"<html>proxy page</html>"))
        provider = providers(server, vlm_key_strategy="priority")
        for _ in range(2):
            error = ask(provider)
            assert isinstance(error, VlmError) and error.reason == "upstream"
            assert "holds no text" in error.words
        assert len(server.seen) == 2


def test_a_prompt_too_long_too_many_images_or_a_non_jpeg_is_refused_without_sending(providers):
    with ChatServer(KEYS) as server:
        provider = providers(server, vlm_prompt_max_chars=50, vlm_images_max=2)
        too_long = ask(provider, "x" * 51)
        too_many_images = ask(provider, images=(JPEG, JPEG, JPEG))
        not_jpeg = ask(provider, images=(b"\x89PNG\r\n",))
        for error, words in (
            (too_long, "more than VLM_PROMPT_MAX_CHARS"),
            (too_many_images, "more than VLM_IMAGES_MAX"),
            (not_jpeg, "not a JPEG"),
        ):
            assert isinstance(error, VlmError) and error.reason == "bad_request" and words in error.words
        assert server.seen == []


# -- which key --------------------------------------------------------------------------------------------


def test_round_robin_takes_the_three_keys_in_turn(providers):
    with ChatServer(KEYS) as server:
        provider = providers(server, vlm_key_strategy="round_robin")
        answers = [ask(provider) for _ in range(6)]
        assert [a.key for a in answers] == ["key-1", "key-2", "key-3"] * 2
        assert server.keys_in_order() == list(KEYS) * 2


def test_priority_takes_the_first_key_while_it_is_usable_and_the_next_when_it_is_full(providers):
    with ChatServer(KEYS) as server:
        provider = providers(server, vlm_key_strategy="priority", vlm_key_concurrency=1)
        assert [ask(provider).key for _ in range(3)] == ["key-1"] * 3

        # Three at once with one request in flight per key: the first key, then the next ones.
        server.script(KEYS[0], Reply(stall=True))
        server.script(KEYS[1], Reply(stall=True))
        results: list = []
        worker = threading.Thread(
            target=lambda: results.extend(provider.generate([VlmRequest("a", (JPEG,))] * 3)), daemon=True
        )
        worker.start()
        assert wait_until(lambda: len(server.seen) == 6)
        assert sorted(server.keys_in_order()[3:]) == sorted(KEYS)  # one each, whichever thread came first
        server.release.set()
        worker.join(10)
        assert sorted(a.key for a in results) == ["key-1", "key-2", "key-3"]


def test_without_keys_the_one_anonymous_slot_sends_no_authorization(providers):
    with ChatServer((ANONYMOUS,)) as server:
        provider = providers(server, keys=())
        answer = ask(provider)
        assert answer.key == "anonymous" and server.keys_in_order() == [ANONYMOUS]
        assert [k["label"] for k in provider.status()["keys"]] == ["anonymous"]


# -- 429, 401/403 ------------------------------------------------------------------------------------------


def test_a_429_rests_its_key_for_its_retry_after_while_another_key_answers(providers):
    with ChatServer(KEYS[:2]) as server:
        server.script(KEYS[0], too_many("2"))
        server.script(KEYS[1], OK)
        provider = providers(server, keys=KEYS[:2], vlm_key_strategy="priority")

        # The first request meets the 429 on key-1 and is answered by key-2.
        first = ask(provider)
        assert isinstance(first, VlmAnswer) and first.key == "key-2"
        refused_at = server.by_key(KEYS[0])[0].at
        status = provider.status()["keys"]
        assert status[0]["state"] == "cooling" and status[0]["until"] and "429" in status[0]["reason"]
        assert status[0]["counts"]["status_429"] == 1

        # While it rests, priority or not, key-1 takes nothing.
        server.script(KEYS[0], OK)
        assert [ask(provider).key for _ in range(4)] == ["key-2"] * 4

        # Once its Retry-After has passed it is first again; it never answered before then.
        assert wait_until(lambda: ask(provider).key == "key-1", timeout=8, step=0.2)
        assert all(seen.at >= refused_at + 1.9 for seen in server.by_key(KEYS[0])[1:])
        assert provider.status()["keys"][0]["state"] == "ok"


def test_when_every_key_cools_down_the_request_fails_in_words_at_its_deadline(providers):
    with ChatServer(KEYS) as server:
        for key in KEYS:
            server.script(key, too_many("120"))
        provider = providers(server, vlm_timeout_s=1.0)
        error = ask(provider)
        assert isinstance(error, VlmError) and error.reason == "rate_limited"
        assert "all 3 keys cooling down until" in error.words
        assert len(server.seen) == 3  # one 429 each, then nothing: the keys rest
        assert [k["state"] for k in provider.status()["keys"]] == ["cooling"] * 3


def test_a_401_disables_its_key_for_good_and_says_so_in_words_never_the_key(providers):
    with ChatServer(KEYS) as server:
        server.script(KEYS[0], refused(401, echo=KEYS[0]))
        server.script(KEYS[1], refused(403))
        provider = providers(server, vlm_key_strategy="priority")

        answers = [ask(provider) for _ in range(3)]
        assert [a.key for a in answers] == ["key-3"] * 3
        assert len(server.by_key(KEYS[0])) == 1 and len(server.by_key(KEYS[1])) == 1  # never again
        one, two, three = provider.status()["keys"]
        assert one["state"] == two["state"] == "disabled" and three["state"] == "ok"
        assert one["reason"].startswith("refused with 401 at ") and one["reason"].endswith(": check the key")
        assert two["reason"].startswith("refused with 403 at ")
        assert_no_key(shown(provider))


def test_when_every_key_is_refused_the_error_says_each_one_why(providers):
    with ChatServer(KEYS) as server:
        for key in KEYS:
            server.script(key, refused(401, echo=key))
        provider = providers(server)
        error = ask(provider)
        assert isinstance(error, VlmError) and error.reason == "unauthorized"
        assert error.words.startswith("every key is disabled: key-1 refused with 401 at ")
        assert "key-3 refused with 401" in error.words
        assert_no_key(error.words)
        # and a later request fails at once, without a word to the server
        assert ask(provider).reason == "unauthorized" and len(server.seen) == 3


# -- retries ------------------------------------------------------------------------------------------------


def test_5xx_is_retried_and_then_succeeds(providers):
    with ChatServer(KEYS[:1]) as server:
        server.script(KEYS[0], server_error(500), server_error(503), OK)
        provider = providers(server, keys=KEYS[:1], vlm_retries=2)
        answer = ask(provider)
        assert isinstance(answer, VlmAnswer)
        assert [seen.reply.status for seen in server.seen] == [500, 503, 200]
        assert provider.status()["keys"][0]["counts"]["status_5xx"] == 2


def test_retries_are_bounded_by_vlm_retries(providers):
    with ChatServer(KEYS[:1]) as server:
        server.script(KEYS[0], server_error(500))
        provider = providers(server, keys=KEYS[:1], vlm_retries=1)
        error = ask(provider)
        assert isinstance(error, VlmError) and error.reason == "upstream"
        assert "HTTP 500 from 127.0.0.1" in error.words and "1 retries" in error.words
        assert len(server.seen) == 2


def test_a_400_is_not_retried_and_says_the_endpoints_words(providers):
    with ChatServer(KEYS[:1]) as server:
        server.script(KEYS[0], bad_request(f"image too large for {KEYS[0]}"))
        provider = providers(server, keys=KEYS[:1], vlm_retries=3)
        error = ask(provider)
        assert isinstance(error, VlmError) and error.reason == "bad_request"
        assert "HTTP 400 from 127.0.0.1" in error.words and "image too large" in error.words
        assert_no_key(error.words)
        assert len(server.seen) == 1


def test_a_redirect_is_not_followed(providers):
    with ChatServer(KEYS[:1]) as server:
        server.script(KEYS[0], Reply(307, headers=(("Location", "http://127.0.0.1:9/elsewhere"),), body=b""))
        provider = providers(server, keys=KEYS[:1])
        error = ask(provider)
        assert error.reason == "bad_request" and "redirects are not followed" in error.words
        assert len(server.seen) == 1


def test_a_server_that_is_down_is_retried_then_said_in_words(providers):
    with ChatServer(KEYS[:1]) as server:
        pass  # closed: its port refuses connections
    provider = providers(server, keys=KEYS[:1], vlm_retries=2)
    error = ask(provider)
    assert isinstance(error, VlmError) and error.reason == "upstream"
    assert "ConnectError from 127.0.0.1" in error.words and "2 retries" in error.words
    assert provider.status()["keys"][0]["counts"]["connection_errors"] == 3


# -- the bound --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply", [Reply(stall=True), Reply(trickle_s=0.2)], ids=["stall", "trickle"])
def test_a_stalled_or_trickling_server_gives_a_timeout_error_before_it_answers(providers, reply):
    with ChatServer(KEYS[:1]) as server:
        server.script(KEYS[0], reply)
        provider = providers(server, keys=KEYS[:1], vlm_timeout_s=1.0, vlm_retries=3)
        error = ask(provider)
        # the server has not answered yet (a stall waits for release; a trickle of ~150 bytes at
        # 0.2 s a byte takes 30 s): the provider gave up at its own bound
        assert server.answered == 0
        assert isinstance(error, VlmError) and error.reason == "timeout"
        assert "within VLM_TIMEOUT_S (1 s" in error.words
        assert len(server.seen) == 1  # the bound covers retries: none was left time for
        assert provider.status()["keys"][0]["counts"]["timeouts"] == 1


def test_the_bound_covers_the_wait_for_a_free_key_and_a_request_that_never_started_is_never_sent(providers):
    with ChatServer(KEYS[:1]) as server:
        server.script(KEYS[0], Reply(delay_s=1.2))
        provider = providers(server, keys=KEYS[:1], vlm_key_concurrency=1, vlm_timeout_s=2.0, vlm_retries=0)
        first, second, third = provider.generate([VlmRequest(f"r{i}", (JPEG,)) for i in range(3)])
        # one at a time: the first is answered, the second is cut at the batch's bound, the third
        # never got the key before it
        assert isinstance(first, VlmAnswer)
        assert [second.reason, third.reason] == ["timeout", "timeout"]
        assert len(server.seen) == 2
        assert provider.status()["keys"][0]["counts"]["timeouts"] == 1


def seconds_counted(arrivals: list[float], start: float, seconds: int) -> list[int]:
    """How many requests had reached the server by the end of each second after `start`."""
    return [sum(1 for t in arrivals if t < start + second) for second in range(1, seconds + 1)]


@pytest.mark.parametrize("keys", [1, 2])
def test_the_qps_limit_holds_per_key_as_the_server_counts_it(providers, keys):
    with ChatServer(KEYS[:keys]) as server:
        provider = providers(server, keys=KEYS[:keys], vlm_key_qps=5, vlm_key_concurrency=16)
        start = time.monotonic()
        answers = provider.generate([VlmRequest(f"r{i}", (JPEG,)) for i in range(15 * keys)])
        assert all(isinstance(a, VlmAnswer) for a in answers)

        # Each key: at most 5 in the first second, 10 by the end of the second, … (a request reaches
        # the server after the pool let it go, never before: these counts are upper bounds whatever
        # the machine's load), and the keys shared the work evenly. Not a burst then a pause: the
        # starts are spread, so the busiest second the server saw holds 5, one more for jitter.
        for key in KEYS[:keys]:
            arrivals = [seen.at for seen in server.by_key(key)]
            assert len(arrivals) == 15
            counted = seconds_counted(arrivals, start, 3)
            assert all(count <= 5 * second for second, count in enumerate(counted, 1)), counted
            assert max(sum(1 for t in arrivals if first <= t < first + 1.0) for first in arrivals) <= 6


# -- POST /ask's share ---------------------------------------------------------------------------------------


def test_asks_never_hold_both_slots_while_a_rule_question_waits(providers):
    with ChatServer(KEYS[:1]) as server:
        server.script(KEYS[0], Reply(stall=True))
        provider = providers(server, keys=KEYS[:1], vlm_key_concurrency=2, vlm_ask_share=0.5, vlm_timeout_s=20)
        asks: list = []
        rules: list = []
        asking = threading.Thread(
            target=lambda: asks.extend(provider.generate([VlmRequest(f"ask{i}", (), "ask") for i in range(3)])),
            daemon=True,
        )
        asking.start()
        assert wait_until(lambda: server.in_flight.get("ask", 0) == 1)
        status = provider.status()
        assert (status["ask_limit"], status["ask_in_flight"]) == (1, 1)

        # A rule question comes while the first question holds its share: it gets the other slot.
        ruling = threading.Thread(
            target=lambda: rules.extend(provider.generate([VlmRequest("rule", (JPEG,), "rule")])), daemon=True
        )
        ruling.start()
        assert wait_until(lambda: server.in_flight.get("rule", 0) == 1)
        ask_tags = [seen.body["messages"][0]["content"][0]["text"] for seen in server.seen if seen.key]
        assert sum(tag.startswith("ask") for tag in ask_tags) == 1  # the other questions still wait

        server.release.set()
        asking.join(20)
        ruling.join(20)
        assert all(isinstance(a, VlmAnswer) for a in asks + rules) and len(asks) == 3
        # Never two questions on the server at once, though the key allows two requests.
        assert server.max_in_flight["ask"] == 1


# -- status, logs, settings, close ------------------------------------------------------------------------------


def test_the_status_shows_labels_host_and_counts_never_a_key_or_the_url_path(providers):
    with ChatServer(KEYS) as server:
        server.script(KEYS[1], refused(401, echo=KEYS[1]))
        provider = providers(server, vlm_key_strategy="round_robin")
        for _ in range(4):
            ask(provider)
        status = provider.status()
        assert status["provider"] == "openai" and status["model_id"] == "test-vlm" and status["trained"] is True
        assert status["host"] == server.base_url.split("//")[1].split("/")[0]
        assert status["strategy"] == "round_robin"
        assert [k["label"] for k in status["keys"]] == ["key-1", "key-2", "key-3"]
        assert sum(k["counts"]["ok"] for k in status["keys"]) == 4
        assert status["keys"][1]["state"] == "disabled"
        text = shown(provider) + repr(provider.status())
        assert_no_key(text)
        assert "/v1" not in text


def test_a_base_url_with_credentials_is_never_shown(caplog):
    basic = "Basic " + base64.b64encode(b"user:pa55w0rd-xyz").decode()
    with ChatServer((basic,)) as server:
        server.script(basic, server_error(502))  # the URL's user and password reached it, as Basic
        settings = VlmSettings(
            vlm_provider="openai",
            vlm_model="m",
            vlm_base_url=server.base_url.replace("http://", "http://user:pa55w0rd-xyz@") + "/tok-secret-path",
            vlm_retries=0,
        )
        provider = from_settings(settings)
        try:
            error = ask(provider)
            said = error.words + json.dumps(provider.status()) + caplog.text
            for secret in ("pa55w0rd-xyz", "tok-secret-path", "user:", basic[6:]):
                assert secret not in said
            assert error.reason == "upstream" and "HTTP 502 from 127.0.0.1" in error.words
            assert server.seen[0].path == "/v1/tok-secret-path/chat/completions"
        finally:
            provider.close()


def test_settings_that_cannot_work_are_refused_in_words():
    with pytest.raises(ValueError, match="VLM_BASE_URL is empty"):
        OpenAiVlm(VlmSettings(vlm_provider="openai"))
    with pytest.raises(ValueError, match="not an http"):
        OpenAiVlm(VlmSettings(vlm_provider="openai", vlm_base_url="ftp://h/v1"))
    with pytest.raises(ValueError, match="keep one") as refused_both:
        OpenAiVlm(VlmSettings(vlm_provider="openai", vlm_base_url="http://u:pw-77@h/v1", vlm_api_keys=KEYS[0]))
    assert "pw-77" not in str(refused_both.value) and KEYS[0] not in str(refused_both.value)


def test_close_fails_waiting_and_running_requests_at_once_with_closed(providers):
    with ChatServer(KEYS[:1]) as server:
        server.script(KEYS[0], Reply(stall=True))
        provider = providers(server, keys=KEYS[:1], vlm_key_concurrency=1, vlm_timeout_s=30)
        results: list = []
        worker = threading.Thread(
            target=lambda: results.extend(provider.generate([VlmRequest("a", ())] * 3)), daemon=True
        )
        worker.start()
        assert wait_until(lambda: len(server.seen) == 1)
        provider.close()
        worker.join(5)
        assert not worker.is_alive() and not server.release.is_set()
        assert [r.reason for r in results] == ["closed"] * 3
        assert ask(provider).reason == "closed"
