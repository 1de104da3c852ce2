"""Context upload benchmark: MB/s of ``ContextService.upload`` on generated documents.

Two documents are generated (seeded, so runs compare): a Markdown file of ``--mb``
megabytes (headings, paragraphs of varied sentences, lists) and a PDF of ``--pdf-pages``
pages made with fpdf2. Each is uploaded through the service the route calls (the real
MiniLM embedder, a fresh SQLite store in a temporary folder), everything but the multipart
parsing: hashing, sniffing, extraction, chunking, embedding and the one storing transaction.
The time of each step is read from the gap between its ``progress`` events.

The baseline, in the same run, is the same file through sniffing, extraction and chunking
only (no embedding, no storing): what the pipeline costs around the model. Prints one JSON
line: per document the file size, seconds, MB/s, chunks, the embedding share of the time,
and the baseline's seconds and MB/s.

    .venv/bin/python bench/context_upload.py
    .venv/bin/python bench/context_upload.py --mb 1 --pdf-pages 40 --threads 2   # minutes: embedding bound
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from sluicegate.clock import SystemClock  # noqa: E402
from sluicegate.engines.store import Store  # noqa: E402
from sluicegate.providers.embeddings import MiniLMEmbedder  # noqa: E402
from sluicegate.services.context import ContextService  # noqa: E402
from sluicegate.services.context.chunking import chunk_text  # noqa: E402
from sluicegate.services.context.extract import extract  # noqa: E402
from sluicegate.services.context.sniff import sniff  # noqa: E402

WORDS = [
    "the",
    "kettle",
    "warranty",
    "covers",
    "rust",
    "for",
    "five",
    "years",
    "orders",
    "ship",
    "within",
    "two",
    "business",
    "days",
    "parcels",
    "to",
    "norway",
    "take",
    "a",
    "week",
    "express",
    "delivery",
    "costs",
    "twelve",
    "euros",
    "our",
    "shop",
    "opens",
    "at",
    "nine",
    "and",
    "closes",
    "at",
    "six",
    "returns",
    "are",
    "free",
    "within",
    "thirty",
    "days",
    "the",
    "steel",
    "handle",
    "stays",
    "cool",
    "while",
    "water",
    "boils",
    "customers",
    "may",
    "ask",
    "about",
    "sizes",
    "colours",
    "prices",
    "stock",
    "and",
    "delivery",
    "times",
]


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 28))]
    return " ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!"])


def markdown(size: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    section = 0
    while total < size:
        section += 1
        block = [f"## Section {section}", ""]
        for _ in range(rng.randint(2, 5)):
            block.append(" ".join(sentence(rng) for _ in range(rng.randint(3, 8))))
            block.append("")
        block.extend(f"- {sentence(rng)}" for _ in range(rng.randint(0, 4)))
        text = "\n".join(block) + "\n\n"
        parts.append(text)
        total += len(text)
    return ("# Generated handbook\n\n" + "".join(parts)).encode()


def pdf(pages: int, seed: int = 2) -> bytes:
    from fpdf import FPDF

    rng = random.Random(seed)
    document = FPDF()
    document.set_font("helvetica", size=10)
    for _ in range(pages):
        document.add_page()
        document.multi_cell(0, 5, " ".join(sentence(rng) for _ in range(45)))
    return bytes(document.output())


async def upload(service: ContextService, data: bytes, chatbot: str) -> dict[str, Any]:
    checked = service.check_upload(1, chatbot_id=chatbot, file_name=chatbot, data=data)
    marks: dict[str, float] = {}
    started = time.perf_counter()
    complete: dict[str, Any] = {}
    async for name, event in service.upload(checked):
        now = time.perf_counter()
        if name == "progress":
            marks.setdefault(event["step"], now)  # the first event of a step: the step before it ended
        elif name == "complete":
            complete = event
    seconds = time.perf_counter() - started
    embedding = marks["storing"] - marks["chunking"]  # from chunks ready to the last batch embedded
    return {
        "bytes": len(data),
        "seconds": round(seconds, 3),
        "mb_per_s": round(len(data) / seconds / 1e6, 3),
        "chunks": complete["chunks"],
        "tokens": complete["tokens"],
        "embedding_share": round(embedding / seconds, 3),
        "storing_s": round(seconds - (marks["storing"] - started), 3),
    }


def baseline(service: ContextService, data: bytes) -> dict[str, Any]:
    started = time.perf_counter()
    sniffed = sniff(data)
    extracted = extract(data, sniffed.kind, sniffed.text)
    chunks = chunk_text(
        extracted.text,
        service.embedder.count_tokens_batch,
        chunk_tokens=service.chunk_tokens,
        overlap=service.chunk_overlap,
        page_starts=extracted.page_starts,
        line_mode=extracted.line_mode,
    )
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 3), "mb_per_s": round(len(data) / seconds / 1e6, 3), "chunks": len(chunks)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    embedder = MiniLMEmbedder(threads=args.threads)
    await embedder.open()
    documents = {"markdown": markdown(int(args.mb * 1_000_000)), "pdf": pdf(args.pdf_pages)}
    result: dict[str, Any] = {
        "bench": "context_upload",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "embedding_threads": args.threads,
        "chunk_tokens": 200,
        "chunk_overlap": 40,
    }
    with tempfile.TemporaryDirectory() as folder:
        store = Store(f"sqlite+aiosqlite:///{folder}/bench.db")
        await store.open()
        try:
            service = ContextService(store, embedder, clock=SystemClock(), max_file_bytes=64 << 20)
            for name, data in documents.items():
                result[name] = {**await upload(service, data, name), "baseline": baseline(service, data)}
        finally:
            await store.close()
            await embedder.close()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=0.25, help="size of the Markdown document (MB)")
    parser.add_argument("--pdf-pages", type=int, default=10, help="pages of the PDF")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads of the embedder")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
