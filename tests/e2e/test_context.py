"""Context uploads end to end: a real server, the real embedding model, files made in the test.

Each upload type (PDF with two pages, DOCX, CSV, JSON, Markdown, plain text) goes through
``POST /api/context/upload-file/stream`` and the test reads the seed's events in order;
bad files end in an ``error`` event with a code and store nothing; duplicates, limits,
listing, deleting and tenants are checked the way a client sees them.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest

from sluicegate.providers.tokencounts import encoding
from sluicegate.streaming.sse import SSEDecoder
from tests.documents import docx_of, pdf_of
from tests.server import UNIT

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.server import Server

KEY_A = "ctx-tenant-a-key-0123456789"
KEY_B = "ctx-tenant-b-key-0123456789"
MAX_FILE = 200_000
URL = "/api/context/upload-file/stream"
STEPS = ["validation", "extraction", "chunking", "embedding", "storing"]


@pytest.fixture(scope="module")
def server(serve_module: Callable[..., Server]) -> Server:
    return serve_module(
        None,
        SLUICEGATE_API_KEYS=f"{KEY_A}:user:1,{KEY_B}:user:2",
        SLUICEGATE_CONTEXT_MAX_FILE_BYTES=str(MAX_FILE),
        SLUICEGATE_RATE_LIMIT_STREAMING_IP="1000/minute",
    )


def make_pdf() -> bytes:
    return pdf_of(
        "Shipping policy. Orders leave the warehouse within two business days.",
        "Warranty terms. Every kettle carries a five year warranty against rust.",
    )


def make_docx() -> bytes:
    return docx_of(
        "Returns",
        "Unworn shoes may be returned within 30 days. Refunds reach the card in a week.",
        [["Size", "Stock"], ["M", "12"]],
    )


CSV = b"name,colour,price\nTrail shoe,red,89\nRain jacket,blue,120\nWool hat,grey,25\n"
JSON = orjson.dumps({"store": {"name": "Harbour Outfitters", "hours": {"weekdays": "9-18", "sunday": "closed"}}})
MARKDOWN = b"# Care guide\n\n## Leather\n\n- Wipe with a damp cloth.\n- Use [wax](https://example.com/wax) monthly.\n"
TEXT = b"The loyalty programme gives one point per euro. Points expire after two years. Dr. Ames runs it.\n"


def upload(
    server: Server,
    data: bytes,
    *,
    key: str = KEY_A,
    chatbot: str | None = "bot1",
    name: str = "file.bin",
    **fields: str,
) -> httpx.Response:
    form = dict(fields)
    if chatbot is not None:
        form["chatbotId"] = chatbot
    return httpx.post(
        server.url + URL,
        headers={"X-API-Key": key},
        files={"file": (name, data, "application/octet-stream")},
        data=form,
        timeout=60 * UNIT,
    )


def events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return [(event.event, orjson.loads(event.data)) for event in SSEDecoder().feed(response.content)]


def documents(server: Server, key: str = KEY_A, chatbot: str | None = "bot1") -> list[dict[str, Any]]:
    params = {"chatbotId": chatbot} if chatbot else {}
    response = httpx.get(f"{server.url}/api/context/documents", params=params, headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["documents"]
    return found


def assert_upload_stream(stream: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """connected, the five steps in order (embedding once per batch), complete, close; returns complete."""
    names = [name for name, _ in stream]
    assert names[0] == "connected" and stream[0][1]["streamId"].startswith("context-upload-")
    assert names[-2:] == ["complete", "close"]
    steps = [data["step"] for name, data in stream if name == "progress"]
    assert [step for n, step in enumerate(steps) if n == 0 or steps[n - 1] != step] == STEPS
    progress = {data["step"]: data for name, data in stream if name == "progress"}
    percents = [data["percent"] for name, data in stream if name == "progress"]
    assert percents == sorted(percents) and 0 < percents[-1] <= 100
    complete = stream[-2][1]
    assert progress["chunking"]["count"] == complete["chunks"] >= 1
    assert progress["embedding"]["count"] == progress["embedding"]["total"] == complete["chunks"]
    assert progress["storing"]["count"] == complete["chunks"]
    assert progress["extraction"]["count"] == complete["characters"]
    assert complete["tokens"] > 0 and complete["duration"] >= 0 and complete["duplicate"] is False
    return complete


@pytest.mark.parametrize(
    ("maker", "content_type"),
    [
        (make_pdf, "application/pdf"),
        (make_docx, "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        (lambda: CSV, "text/csv"),
        (lambda: JSON, "application/json"),
        (lambda: MARKDOWN, "text/markdown"),
        (lambda: TEXT, "text/plain"),
    ],
    ids=["pdf", "docx", "csv", "json", "markdown", "text"],
)
def test_every_type_is_recognised_by_content_and_streams_its_steps(
    server: Server, maker: Callable[[], bytes], content_type: str
) -> None:
    data = maker()
    chatbot = f"types-{content_type.rsplit('/', 1)[-1][:20]}"
    # The name says nothing true: detection goes by the bytes.
    stream = events(upload(server, data, chatbot=chatbot, name="misleading.txt"))
    complete = assert_upload_stream(stream)
    validation = next(data for name, data in stream if name == "progress" and data["step"] == "validation")
    assert validation["contentType"] == content_type and validation["size"] == len(data)
    assert complete["chatbotId"] == chatbot and complete["fileName"] == "misleading.txt"
    [listed] = documents(server, chatbot=chatbot)
    assert listed["id"] == complete["documentId"] and listed["contentType"] == content_type
    assert listed["chunks"] == complete["chunks"] and listed["characters"] == complete["characters"]
    assert listed["pages"] == (2 if content_type == "application/pdf" else None)


def test_a_long_document_is_embedded_in_batches_with_its_chunk_options(server: Server) -> None:
    sentences = [f"Fact number {n} says the blue kettle number {n} boils in {n % 7 + 2} minutes." for n in range(400)]
    data = " ".join(sentences).encode()
    stream = events(upload(server, data, chatbot="long", chunkSize="64", chunkOverlap="16"))
    complete = assert_upload_stream(stream)
    embedding = [data for name, data in stream if name == "progress" and data["step"] == "embedding"]
    assert len(embedding) >= 2  # one event per batch of 32 chunks
    assert [e["count"] for e in embedding] == sorted({e["count"] for e in embedding})
    assert complete["chunks"] >= complete["tokens"] // 64


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"%PDF-1.4\n" + os.urandom(3000), "EXTRACTION_FAILED"),
        (os.urandom(4000), "UNSUPPORTED_FILE_TYPE"),
        (b"PK\x03\x04" + os.urandom(500), "EXTRACTION_FAILED"),
        (b"  \n\n  ", "EMPTY_DOCUMENT"),
    ],
    ids=["corrupt-pdf", "random-bytes", "docx-not-a-zip", "empty"],
)
def test_a_bad_file_is_an_error_event_with_a_code_and_stores_nothing(server: Server, data: bytes, code: str) -> None:
    before = documents(server, chatbot="bad")
    stream = events(upload(server, data, chatbot="bad", name="doc.pdf"))
    names = [name for name, _ in stream]
    assert names[0] == "connected" and names[-2:] == ["error", "close"] and "complete" not in names
    error = stream[-2][1]
    assert error["code"] == code and error["message"] == "Upload failed" and error["error"]
    assert documents(server, chatbot="bad") == before


def test_the_same_bytes_again_are_recognised_and_not_stored_twice(server: Server) -> None:
    data = b"Gift cards never expire. They can be used online and in every shop.\n"
    first = assert_upload_stream(events(upload(server, data, chatbot="dup", name="a.txt")))
    again = events(upload(server, data, chatbot="dup", name="b.txt"))
    assert [name for name, _ in again] == ["connected", "progress", "complete", "close"]
    complete = again[2][1]
    assert complete["duplicate"] is True and complete["documentId"] == first["documentId"]
    assert complete["chunks"] == first["chunks"] and complete["fileName"] == "a.txt"
    assert [doc["id"] for doc in documents(server, chatbot="dup")] == [first["documentId"]]
    # Another chatbot (or tenant) with the same bytes is a document of its own.
    other = assert_upload_stream(events(upload(server, data, chatbot="dup-other")))
    assert other["documentId"] != first["documentId"]


def test_openai_token_counts_come_beside_the_models_when_asked(server: Server) -> None:
    text = "The loyalty programme gives one point per euro spent in 2026. Points expire after two years.\n"
    plain = assert_upload_stream(events(upload(server, text.encode(), chatbot="counts")))
    assert "tokenCounts" not in plain
    asked = events(upload(server, text.encode(), chatbot="counts", tokenCounts="cl100k_base"))
    complete = dict(asked)["complete"]
    assert complete["duplicate"] is True and complete["documentId"] == plain["documentId"]
    assert complete["tokens"] == plain["tokens"]  # the embedding model's own count, as stored
    assert complete["tokenCounts"] == {"cl100k_base": len(encoding("cl100k_base").encode_ordinary(text))}
    fresh = assert_upload_stream(events(upload(server, MARKDOWN, chatbot="counts", tokenCounts="cl100k_base")))
    assert fresh["tokenCounts"]["cl100k_base"] > 0 and fresh["tokenCounts"]["cl100k_base"] != fresh["tokens"]


def test_an_oversized_file_is_a_413_before_the_stream(server: Server) -> None:
    response = upload(server, b"a" * (MAX_FILE + 1), chatbot="big")
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert str(MAX_FILE) in response.text
    assert documents(server, chatbot="big") == []


def test_a_body_streamed_past_the_limit_without_a_length_is_a_413(server: Server) -> None:
    boundary = "xyzBOUNDARY"

    def body() -> Any:
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="chatbotId"\r\n\r\nbig\r\n'.encode()
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.txt"\r\n\r\n'.encode()
        for _ in range(40):
            yield b"b" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(
        server.url + URL,
        headers={"X-API-Key": KEY_A, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=body(),
        timeout=30 * UNIT,
    )
    assert response.status_code == 413, response.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chatbot": None}, "chatbotId"),
        ({"chunkSize": "300"}, "chunkSize"),
        ({"chunkSize": "abc"}, "chunkSize"),
        ({"chunkSize": "64", "chunkOverlap": "64"}, "chunkOverlap"),
        ({"chunkOverlap": "-1"}, "chunkOverlap"),
        ({"tokenCounts": "gpt2"}, "tokenCounts"),
    ],
    ids=["no-chatbot", "chunk-too-big", "chunk-not-int", "overlap-not-less", "overlap-negative", "unknown-encoding"],
)
def test_wrong_fields_are_a_400_before_the_stream(server: Server, kwargs: dict[str, Any], message: str) -> None:
    response = upload(server, TEXT, **kwargs)
    assert response.status_code == 400, response.text
    assert message in response.text


def test_no_file_or_not_multipart_is_a_400(server: Server) -> None:
    no_file = httpx.post(server.url + URL, headers={"X-API-Key": KEY_A}, data={"chatbotId": "bot1"}, timeout=10)
    assert no_file.status_code == 400 and "file" in no_file.text
    as_json = httpx.post(server.url + URL, headers={"X-API-Key": KEY_A}, json={"chatbotId": "bot1"}, timeout=10)
    assert as_json.status_code == 400 and "multipart" in as_json.text
    unauthenticated = httpx.post(server.url + URL, files={"file": ("a.txt", TEXT)}, data={"chatbotId": "x"})
    assert unauthenticated.status_code == 401


def test_curl_upload_from_the_docs(server: Server, tmp_path: Any) -> None:
    path = tmp_path / "doc.pdf"
    path.write_bytes(make_pdf())
    endpoint = server.url + URL
    result = subprocess.run(
        ["curl", "-sS", "-N", "-F", f"file=@{path}", "-F", "chatbotId=curl-bot", "-H", f"X-API-Key: {KEY_A}", endpoint],
        capture_output=True,
        timeout=60 * UNIT,
        check=True,
    )
    stream = [(e.event, json.loads(e.data)) for e in SSEDecoder().feed(result.stdout)]
    assert assert_upload_stream(stream)["fileName"] == "doc.pdf"


def test_list_and_delete_and_tenants_never_see_each_other(server: Server) -> None:
    data = b"The shop dog is called Biscuit and sleeps by the till.\n"
    mine = assert_upload_stream(events(upload(server, data, key=KEY_A, chatbot="shared-name")))
    theirs = assert_upload_stream(events(upload(server, data, key=KEY_B, chatbot="shared-name")))
    assert mine["documentId"] != theirs["documentId"]  # same bytes, other tenant: not a duplicate
    assert [d["id"] for d in documents(server, KEY_A, "shared-name")] == [mine["documentId"]]
    assert [d["id"] for d in documents(server, KEY_B, "shared-name")] == [theirs["documentId"]]
    assert theirs["documentId"] not in {d["id"] for d in documents(server, KEY_A, None)}
    listed = documents(server, KEY_A, "shared-name")[0]
    assert set(listed) >= {"id", "fileName", "contentType", "chunks", "tokens", "characters", "pages", "createdAt"}

    url = f"{server.url}/api/context/documents/"
    other_tenant = httpx.delete(url + theirs["documentId"], headers={"X-API-Key": KEY_A})
    assert other_tenant.status_code == 404
    assert [d["id"] for d in documents(server, KEY_B, "shared-name")] == [theirs["documentId"]]
    deleted = httpx.delete(url + mine["documentId"], headers={"X-API-Key": KEY_A})
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert documents(server, KEY_A, "shared-name") == []
    assert httpx.delete(url + mine["documentId"], headers={"X-API-Key": KEY_A}).status_code == 404
    # Deleted content may be uploaded again: it is a new document.
    again = assert_upload_stream(events(upload(server, data, key=KEY_A, chatbot="shared-name")))
    assert again["documentId"] != mine["documentId"]
