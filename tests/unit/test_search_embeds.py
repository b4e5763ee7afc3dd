"""The search queries' encoder thread admits a bounded number of waiting queries: a burst past it is
answered 429 at once, and places come back when calls end, however they end."""

from __future__ import annotations

import asyncio
import threading

import pytest

from rtdetr_service.web.deps import SearchEmbeds
from rtdetr_service.web.errors import ApiError


def test_a_burst_past_the_bound_is_refused_at_once_and_places_come_back():
    async def scenario():
        embeds = SearchEmbeds(waiting=2)
        gate = threading.Event()
        try:
            # Given the encoder busy with one query and one more waiting for it
            first = asyncio.create_task(embeds.run(gate.wait, 10))
            second = asyncio.create_task(embeds.run(lambda: "second"))
            await asyncio.sleep(0.05)
            # Then a third is refused in words, without waiting
            with pytest.raises(ApiError) as refused:
                await asyncio.wait_for(embeds.run(lambda: "third"), 1.0)
            assert refused.value.code == "too_many_searches" and "2 searches are waiting" in refused.value.detail
            # And a caller that goes away gives its place back
            second.cancel()
            await asyncio.sleep(0.05)
            late = asyncio.create_task(embeds.run(lambda: "late"))
            gate.set()
            assert await first is True and await late == "late"
            assert await embeds.run(lambda: "after") == "after"
        finally:
            gate.set()
            embeds.shutdown(wait=True)

    asyncio.run(scenario())
