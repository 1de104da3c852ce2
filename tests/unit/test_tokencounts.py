"""OpenAI-compatible ``cl100k_base`` counts from the packaged ranks, offline."""

from __future__ import annotations

import pytest

from sluicegate.errors import APIError
from sluicegate.providers.tokencounts import count_tokens, encoding, parse_token_counts, usage_counts


def test_cl100k_base_gives_openais_published_token_ids() -> None:
    enc = encoding("cl100k_base")
    # OpenAI's cookbook ("How to count tokens with tiktoken") shows these ids for cl100k_base.
    assert enc.encode_ordinary("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert enc.encode_ordinary("hello world") == [15339, 1917]
    assert enc.n_vocab == 100277
    assert enc.decode(enc.encode_ordinary("Grüße, 東京! 12345")) == "Grüße, 東京! 12345"


async def test_counts_treat_special_tokens_as_text() -> None:
    assert await count_tokens("cl100k_base", ["tiktoken is great!", "", "<|endoftext|>"]) == [6, 0, 7]
    usage = await usage_counts(("cl100k_base",), "hello world", "tiktoken is great!")
    assert usage == {"cl100k_base": {"promptTokens": 2, "completionTokens": 6, "totalTokens": 8}}


def test_requests_name_known_encodings_only() -> None:
    assert parse_token_counts(None) == ()
    assert parse_token_counts("cl100k_base") == ("cl100k_base",)
    assert parse_token_counts(["cl100k_base", "cl100k_base"]) == ("cl100k_base",)
    assert parse_token_counts(" cl100k_base , ") == ("cl100k_base",)
    for bad in (["o200k_base"], "gpt2", [1], {"cl100k_base": True}, 5):
        with pytest.raises(APIError) as caught:
            parse_token_counts(bad)
        assert caught.value.details == {"field": "tokenCounts"}
