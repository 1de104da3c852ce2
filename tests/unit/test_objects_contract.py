"""The ObjectStore contract, over a local folder and over S3 (moto's server on loopback)."""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import boto3
import pytest

from sluicegate.engines.objects import (
    InvalidKey,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreUnavailable,
    check_key,
    object_store_from_url,
)
from sluicegate.errors import ConfigurationError
from tests.s3 import moto_s3

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

UNREACHABLE = "s3://bucket-x?endpoint=http://127.0.0.1:1&region=us-east-1"

BAD_KEYS = [
    pytest.param("", id="empty"),
    pytest.param("..", id="dotdot"),
    pytest.param("../escape", id="dotdot-leading"),
    pytest.param("a/../../b", id="dotdot-inner"),
    pytest.param("a/..", id="dotdot-trailing"),
    pytest.param("/abs", id="leading-slash"),
    pytest.param("/", id="slash"),
    pytest.param("a//b", id="empty-segment"),
    pytest.param("a/", id="trailing-slash"),
    pytest.param(".", id="dot"),
    pytest.param("./a", id="dot-leading"),
    pytest.param("a/./b", id="dot-inner"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("..\\windows", id="backslash-dotdot"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a\x1fb", id="unit-separator"),
    pytest.param("a\x7fb", id="del"),
    pytest.param("k" * 1025, id="too-long"),
]

BAD_PREFIXES = [
    pytest.param("../", id="dotdot"),
    pytest.param("..", id="dotdot-bare"),
    pytest.param("/", id="slash"),
    pytest.param("/a/", id="leading-slash"),
    pytest.param("a//b/", id="empty-segment"),
    pytest.param("./", id="dot"),
    pytest.param("a/./", id="dot-inner"),
    pytest.param("a\\b/", id="backslash"),
    pytest.param("a\x00/", id="nul"),
    pytest.param("a\n/", id="newline"),
    pytest.param("k" * 1025 + "/", id="too-long"),
]


# -- servers and stores ------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """An S3 API on loopback for the whole module, with fake credentials in the environment."""
    with moto_s3() as endpoint:
        yield endpoint


def _new_bucket(endpoint: str) -> Any:
    bucket = f"bucket-{uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    return client, bucket


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return object_store_from_url(f"file://{tmp_path / 'objects'}")
    endpoint: str = request.getfixturevalue("moto_endpoint")
    _, bucket = _new_bucket(endpoint)
    return object_store_from_url(f"s3://{bucket}?endpoint={endpoint}&region=us-east-1")


@pytest.fixture
def unreachable() -> ObjectStore:
    """An S3 store nothing listens for: any I/O at all fails with ObjectStoreUnavailable."""
    return object_store_from_url(UNREACHABLE)


def _payload(size: int) -> bytes:
    block = bytes(range(256))
    return (block * (size // len(block) + 1))[:size]


# -- put / get ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"hello\n", id="small"),
        pytest.param(bytes(range(256)), id="binary"),
        pytest.param(_payload(3 * 1024 * 1024), id="3mb"),
    ],
)
async def test_put_then_get_round_trips(store: ObjectStore, data: bytes) -> None:
    await store.put("races/s/1/000001.jsonl.zst", data)
    assert await store.get("races/s/1/000001.jsonl.zst") == data


async def test_put_replaces_the_object(store: ObjectStore) -> None:
    await store.put("k", b"first version, longer")
    await store.put("k", b"second")
    assert await store.get("k") == b"second"
    [info] = await store.list("")
    assert (info.key, info.size) == ("k", 6)


async def test_get_of_a_missing_key_raises_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        await store.get("missing/key")


async def test_not_found_is_a_key_error(store: ObjectStore) -> None:
    with pytest.raises(KeyError):
        await store.get("missing")


# -- stream ------------------------------------------------------------------------------


async def test_stream_yields_chunks_of_the_whole_object(store: ObjectStore) -> None:
    data = _payload(5 * 1024 * 1024 + 123)
    await store.put("big/blob", data)
    chunks = [chunk async for chunk in store.stream("big/blob")]
    assert all(isinstance(chunk, bytes) for chunk in chunks)
    assert len(chunks) > 1  # streamed, not read whole
    assert b"".join(chunks) == data


async def test_stream_of_an_empty_object_yields_nothing_but_empty(store: ObjectStore) -> None:
    await store.put("empty", b"")
    assert b"".join([chunk async for chunk in store.stream("empty")]) == b""


async def test_stream_of_a_missing_key_raises_not_found_when_iterated(store: ObjectStore) -> None:
    iterator = store.stream("missing/key")  # nothing happens before iteration
    with pytest.raises(ObjectNotFound):
        async for _ in iterator:
            pass


# -- list --------------------------------------------------------------------------------


async def _populate(store: ObjectStore) -> dict[str, bytes]:
    objects = {
        "races/b/2/000002.jsonl.zst": b"22",
        "races/b/1/000001.jsonl.zst": b"1",
        "races/a/9/000001.jsonl.zst": b"abc",
        "racesque/x": b"not under races/",
        "other/y": b"yyyy",
        "top": b"t",
    }
    for key, data in objects.items():
        await store.put(key, data)
    return objects


async def test_list_with_a_prefix_returns_only_keys_under_it_sorted_with_sizes(store: ObjectStore) -> None:
    await _populate(store)
    found = await store.list("races/")
    assert [(info.key, info.size) for info in found] == [
        ("races/a/9/000001.jsonl.zst", 3),
        ("races/b/1/000001.jsonl.zst", 1),
        ("races/b/2/000002.jsonl.zst", 2),
    ]
    for info in found:
        assert isinstance(info.last_modified, datetime)
        assert info.last_modified.tzinfo is not None


async def test_list_prefix_without_trailing_slash_is_a_folder_not_a_string_prefix(store: ObjectStore) -> None:
    await _populate(store)
    assert [info.key for info in await store.list("races/b")] == [
        "races/b/1/000001.jsonl.zst",
        "races/b/2/000002.jsonl.zst",
    ]


async def test_list_of_everything(store: ObjectStore) -> None:
    objects = await _populate(store)
    found = await store.list("")
    assert [info.key for info in found] == sorted(objects)
    assert {info.key: info.size for info in found} == {key: len(data) for key, data in objects.items()}


async def test_list_of_an_unknown_prefix_or_an_empty_store_is_empty(store: ObjectStore) -> None:
    assert await store.list("") == []
    assert await store.list("nothing/") == []


# -- delete ------------------------------------------------------------------------------


async def test_delete_removes_the_object(store: ObjectStore) -> None:
    await store.put("a/b", b"x")
    await store.put("a/c", b"y")
    await store.delete("a/b")
    with pytest.raises(ObjectNotFound):
        await store.get("a/b")
    assert [info.key for info in await store.list("")] == ["a/c"]


async def test_deleting_a_missing_key_is_not_an_error(store: ObjectStore) -> None:
    await store.delete("never/was")
    await store.put("k", b"x")
    await store.delete("k")
    await store.delete("k")


async def test_deleting_a_key_that_is_a_folder_on_disk_is_not_an_error(tmp_path: Path) -> None:
    store = object_store_from_url(f"file://{tmp_path / 'objects'}")
    await store.put("a/b", b"x")
    with pytest.raises(ObjectNotFound):
        await store.get("a")
    await store.delete("a")  # "a" is not an object: deleting it should be a no-op


# -- check -------------------------------------------------------------------------------


async def test_check_passes_on_an_empty_and_a_filled_store(store: ObjectStore) -> None:
    await store.check()
    await store.put("x/y", b"1")
    await store.check()


async def test_open_and_close_are_harmless(store: ObjectStore) -> None:
    await store.open()
    await store.put("k", b"v")
    await store.close()


# -- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", BAD_KEYS)
def test_check_key_refuses(key: str) -> None:
    with pytest.raises(InvalidKey):
        check_key(key)


@pytest.mark.parametrize("key", ["k", "races/s/abc/000001.jsonl.zst", "a.b/c..d/.hidden", "x" * 1024, "sp ace", "é"])
def test_check_key_accepts_plain_relative_keys(key: str) -> None:
    assert check_key(key) == key


def test_invalid_key_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        check_key("../x")


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_invalid_keys_are_refused_before_any_io(unreachable: ObjectStore, key: str) -> None:
    # Any I/O against this store would raise ObjectStoreUnavailable instead.
    with pytest.raises(InvalidKey):
        await unreachable.put(key, b"x")
    with pytest.raises(InvalidKey):
        await unreachable.get(key)
    with pytest.raises(InvalidKey):
        await unreachable.delete(key)
    with pytest.raises(InvalidKey):
        async for _ in unreachable.stream(key):
            pass


@pytest.mark.parametrize("prefix", BAD_PREFIXES)
async def test_invalid_list_prefixes_are_refused_before_any_io(unreachable: ObjectStore, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        await unreachable.list(prefix)


async def test_list_prefix_ending_in_an_empty_segment_raises_invalid_key(tmp_path: Path) -> None:
    store = object_store_from_url(f"file://{tmp_path / 'objects'}")
    with pytest.raises(InvalidKey):
        await store.list("a//")


@pytest.mark.parametrize("key", [pytest.param("../x", id="dotdot"), pytest.param("a//b", id="empty-segment")])
async def test_invalid_keys_are_refused_by_real_stores_and_write_nothing(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        await store.put(key, b"x")
    with pytest.raises(InvalidKey):
        await store.get(key)
    with pytest.raises(InvalidKey):
        await store.delete(key)
    with pytest.raises(InvalidKey):
        await store.list(key + "/")
    assert await store.list("") == []


async def test_file_store_never_writes_outside_its_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = object_store_from_url(f"file://{root}")
    for key in ("../outside", "a/../../outside", "/tmp/outside"):  # noqa: S108 -- a key, never written
        with pytest.raises(InvalidKey):
            await store.put(key, b"x")
    assert os.listdir(tmp_path) == ["root"]


# -- unreachable -------------------------------------------------------------------------


async def test_unreachable_store_raises_unavailable_from_put_and_check(unreachable: ObjectStore) -> None:
    started = time.monotonic()
    with pytest.raises(ObjectStoreUnavailable):
        await unreachable.put("k", b"x")
    with pytest.raises(ObjectStoreUnavailable) as caught:
        await unreachable.check()
    assert isinstance(caught.value, ConnectionError)
    assert time.monotonic() - started < 10  # a few small retries, not minutes


async def test_unreachable_store_raises_unavailable_from_get_list_and_delete(unreachable: ObjectStore) -> None:
    with pytest.raises(ObjectStoreUnavailable):
        await unreachable.get("k")
    with pytest.raises(ObjectStoreUnavailable):
        await unreachable.list("")
    with pytest.raises(ObjectStoreUnavailable):
        await unreachable.delete("k")
    with pytest.raises(ObjectStoreUnavailable):
        async for _ in unreachable.stream("k"):
            pass


# -- object_store_from_url ---------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://host/x", "gs://bucket", "http://127.0.0.1:9000/bucket", "/just/a/path"])
def test_unknown_scheme_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="SLUICEGATE_OBJECT_STORE_URL"):
        object_store_from_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "s3://bucket?endpoint=http://127.0.0.1:9000&bogus=1",
        "s3://bucket?secret=abc",
        "s3://bucket?region=us-east-1&Endpoint=http://x",
    ],
)
def test_unknown_s3_option_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="SLUICEGATE_OBJECT_STORE_URL") as caught:
        object_store_from_url(url)
    assert "unknown options" in str(caught.value)


def test_unknown_s3_option_is_named_but_secrets_are_not_echoed() -> None:
    with pytest.raises(ConfigurationError) as caught:
        object_store_from_url("s3://bucket?secret_access_key=TopSecretValue42&colour=blue")
    assert "colour" in str(caught.value)
    assert "TopSecretValue42" not in str(caught.value)


@pytest.mark.parametrize("url", ["s3://", "s3:///", "s3:///prefix/only", "s3://?region=us-east-1"])
def test_s3_without_a_bucket_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="SLUICEGATE_OBJECT_STORE_URL"):
        object_store_from_url(url)


def test_file_url_creates_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "er" / "objects"
    store = object_store_from_url(f"file://{root}")
    assert root.is_dir()
    assert store.description == f"file://{root.resolve()}"
    assert store.name == "objects"


async def test_file_store_keeps_objects_as_files_under_its_root(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = object_store_from_url(f"file://{root}")
    await store.put("races/s/1/000001.jsonl.zst", b"payload")
    assert (root / "races" / "s" / "1" / "000001.jsonl.zst").read_bytes() == b"payload"


def test_s3_description_never_holds_the_secret() -> None:
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRET"
    store = object_store_from_url(
        f"s3://my-bucket/some/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1"
        f"&access_key_id=AKIDEXAMPLE&secret_access_key={secret}"
    )
    assert secret not in store.description
    assert "secret" not in store.description
    assert store.description.startswith("s3://my-bucket/some/prefix")
    assert "http://127.0.0.1:9000" in store.description


async def test_s3_errors_never_hold_the_secret() -> None:
    secret = "AnotherSecretValue-0123456789"
    store = object_store_from_url(f"{UNREACHABLE}&access_key_id=AKIDEXAMPLE&secret_access_key={secret}")
    with pytest.raises(ObjectStoreUnavailable) as caught:
        await store.put("k", b"x")
    assert secret not in str(caught.value)


async def test_s3_credentials_in_the_url_are_used(moto_endpoint: str) -> None:
    _, bucket = _new_bucket(moto_endpoint)
    store = object_store_from_url(
        f"s3://{bucket}?endpoint={moto_endpoint}&region=us-east-1&access_key_id=AKID&secret_access_key=SECRET"
    )
    await store.put("k", b"v")
    assert await store.get("k") == b"v"


async def test_s3_path_is_a_prefix_inside_the_bucket(moto_endpoint: str) -> None:
    client, bucket = _new_bucket(moto_endpoint)
    store = object_store_from_url(f"s3://{bucket}/tenant/one?endpoint={moto_endpoint}&region=us-east-1")
    await store.put("races/x", b"data")
    listed = client.list_objects_v2(Bucket=bucket)
    assert [item["Key"] for item in listed["Contents"]] == ["tenant/one/races/x"]
    assert [info.key for info in await store.list("")] == ["races/x"]
    assert await store.get("races/x") == b"data"
