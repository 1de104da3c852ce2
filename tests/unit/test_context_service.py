"""The context service on a real store (SQLite and PostgreSQL) with the real embedding model:
uploads, duplicates (also racing), nothing half-stored, and retrieval per tenant and chatbot."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import func, select

from sluicegate.clock import SystemClock
from sluicegate.engines.store import Store
from sluicegate.providers.embeddings import MiniLMEmbedder
from sluicegate.services.context import ContextService
from sluicegate.services.context.errors import ExtractionFailed
from sluicegate.services.context.tables import ContextChunkRow, ContextDocumentRow

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.services.context.service import UploadRequest

FACTS = {
    "kettles.txt": (
        "Our steel kettles are made in Sheffield. Every kettle carries a five year warranty against rust. "
        "The handle stays cool while the water boils."
    ),
    "shipping.md": (
        "# Shipping\n\nOrders leave the warehouse within two business days. "
        "Parcels to Norway take about a week. Express delivery costs twelve euros."
    ),
    "hours.txt": "The Dublin shop opens at nine and closes at six. On Sundays the shop is closed all day.",
}


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = Store(database_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def service(store: Store, embedder: MiniLMEmbedder) -> ContextService:
    return ContextService(
        store, embedder, clock=SystemClock(), max_file_bytes=1 << 20, chunk_tokens=64, chunk_overlap=16
    )


def request(
    service: ContextService, data: bytes, *, tenant: int = 1, chatbot: str = "bot", name: str = "f"
) -> UploadRequest:
    return service.check_upload(tenant, chatbot_id=chatbot, file_name=name, data=data)


async def run(service: ContextService, upload: UploadRequest) -> list[tuple[str, dict[str, Any]]]:
    return [event async for event in service.upload(upload)]


async def counts(store: Store) -> tuple[int, int]:
    async with store.session() as session:
        documents = await session.scalar(select(func.count()).select_from(ContextDocumentRow))
        chunks = await session.scalar(select(func.count()).select_from(ContextChunkRow))
    return int(documents or 0), int(chunks or 0)


async def test_an_upload_stores_the_document_and_its_chunks_with_offsets(service: ContextService, store: Store) -> None:
    text = FACTS["shipping.md"]
    events = await run(service, request(service, text.encode(), name="shipping.md"))
    complete = events[-1][1]
    assert events[-1][0] == "complete" and complete["contentType"] == "text/markdown"
    async with store.session() as session:
        chunks = (await session.scalars(select(ContextChunkRow).order_by(ContextChunkRow.ordinal))).all()
    assert len(chunks) == complete["chunks"]
    for chunk in chunks:
        assert text[chunk.start_offset : chunk.end_offset] == chunk.text
        assert chunk.document_id == complete["documentId"] and chunk.page is None
        assert len(chunk.embedding) == 384 * 4


async def test_the_same_bytes_twice_are_one_document(service: ContextService, store: Store) -> None:
    data = FACTS["kettles.txt"].encode()
    first = (await run(service, request(service, data)))[-1][1]
    second = await run(service, request(service, data, name="again"))
    assert [name for name, _ in second] == ["progress", "complete"]
    assert second[-1][1]["duplicate"] is True and second[-1][1]["documentId"] == first["documentId"]
    assert await counts(store) == (1, first["chunks"])


async def test_two_uploads_racing_with_the_same_bytes_store_one_document(service: ContextService, store: Store) -> None:
    data = FACTS["hours.txt"].encode()
    results = await asyncio.gather(*(run(service, request(service, data, name=f"n{n}")) for n in range(3)))
    completes = [events[-1][1] for events in results]
    assert len({c["documentId"] for c in completes}) == 1
    assert sorted(c["duplicate"] for c in completes) == [False, True, True]
    assert await counts(store) == (1, completes[0]["chunks"])


async def test_a_failed_upload_stores_nothing(service: ContextService, store: Store) -> None:
    with pytest.raises(ExtractionFailed):
        await run(service, request(service, b"%PDF-1.4\n" + bytes(range(256)) * 8))
    assert await counts(store) == (0, 0)


async def test_an_upload_abandoned_while_embedding_stores_nothing(service: ContextService, store: Store) -> None:
    data = " ".join(f"Sentence {n} tells a small fact about lamp {n}." for n in range(600)).encode()
    events = service.upload(request(service, data))
    async for name, event in events:
        if name == "progress" and event["step"] == "embedding":
            break  # the client left mid-way: the generator is closed
    await events.aclose()  # type: ignore[attr-defined]
    assert await counts(store) == (0, 0)


async def upload_facts(service: ContextService, tenant: int, chatbot: str) -> dict[str, str]:
    ids = {}
    for name, text in FACTS.items():
        ids[name] = (await run(service, request(service, text.encode(), tenant=tenant, chatbot=chatbot, name=name)))[
            -1
        ][1]["documentId"]
    return ids


async def test_retrieval_finds_the_chunk_that_answers_a_question(service: ContextService) -> None:
    ids = await upload_facts(service, 1, "shop")
    found = await service.retrieve(1, "shop", "How long is the warranty on a kettle?", 3)
    assert found[0].document_id == ids["kettles.txt"] and found[0].file_name == "kettles.txt"
    assert "five year warranty" in found[0].text
    assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)
    assert -1.0 <= found[-1].score < found[0].score <= 1.0
    sunday = await service.retrieve(1, "shop", "Is the shop open on Sunday?", 1)
    assert sunday[0].document_id == ids["hours.txt"]
    text = FACTS["hours.txt"]
    assert text[sunday[0].start_offset : sunday[0].end_offset] == sunday[0].text


async def test_retrieval_never_crosses_tenants_or_chatbots(service: ContextService) -> None:
    await upload_facts(service, 1, "shop")
    assert await service.retrieve(2, "shop", "kettle warranty", 5) == []
    assert await service.retrieve(1, "other-bot", "kettle warranty", 5) == []
    other = (await run(service, request(service, b"Tenant two sells only bicycles.", tenant=2, chatbot="shop")))[-1][1]
    found = await service.retrieve(2, "shop", "kettle warranty", 5)
    assert [f.document_id for f in found] == [other["documentId"]]
    assert all(f.document_id != other["documentId"] for f in await service.retrieve(1, "shop", "bicycles", 10))


async def test_a_delete_reaches_the_index_of_another_node(
    service: ContextService, store: Store, embedder: MiniLMEmbedder
) -> None:
    ids = await upload_facts(service, 1, "shop")
    other_node = ContextService(store, embedder, clock=SystemClock(), max_file_bytes=1 << 20)
    assert (await other_node.retrieve(1, "shop", "kettle warranty", 1))[0].document_id == ids["kettles.txt"]
    await service.delete(1, ids["kettles.txt"])
    found = await other_node.retrieve(1, "shop", "kettle warranty", 10)
    assert found and ids["kettles.txt"] not in {f.document_id for f in found}
    # A new upload on this node is seen by the other one too.
    new = (await run(service, request(service, b"The copper kettle has a ten year warranty.", chatbot="shop")))[-1][1]
    assert (await other_node.retrieve(1, "shop", "copper kettle warranty", 1))[0].document_id == new["documentId"]


async def test_delete_of_another_tenants_document_is_not_found(service: ContextService, store: Store) -> None:
    from sluicegate.errors import APIError

    ids = await upload_facts(service, 1, "shop")
    with pytest.raises(APIError) as caught:
        await service.delete(2, ids["hours.txt"])
    assert caught.value.status == 404
    assert len(await service.documents(1, "shop")) == 3 and await service.documents(2) == []


async def test_retrieve_vector_takes_a_query_already_embedded(
    service: ContextService, embedder: MiniLMEmbedder
) -> None:
    ids = await upload_facts(service, 1, "shop")
    vector = (await embedder.embed(["parcel delivery to Norway"]))[0]
    assert (await service.retrieve_vector(1, "shop", vector, 1))[0].document_id == ids["shipping.md"]


async def test_a_fact_on_the_second_page_of_a_pdf_is_retrieved_with_its_page(service: ContextService) -> None:
    from tests.unit.test_context_sniff import two_page_pdf

    complete = (await run(service, request(service, two_page_pdf(), chatbot="pdf", name="terms.pdf")))[-1][1]
    assert complete["pages"] == 2 and complete["contentType"] == "application/pdf"
    [best] = await service.retrieve(1, "pdf", "How many years does the warranty last?", 1)
    assert best.page == 2 and "five years" in best.text and best.file_name == "terms.pdf"
    [first] = await service.retrieve(1, "pdf", "When do orders ship?", 1)
    assert first.page == 1 and "two days" in first.text
