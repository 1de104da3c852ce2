"""Atom digests: the compiled extension and the hashlib fallback give the same bytes."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import sysconfig

import pytest

from sluicegate.services.ingest import atoms


def expected(lines: list[bytes]) -> bytes:
    return b"".join(hashlib.sha256(line).digest() for line in lines)


CASES = {
    "records": [b'{"timestamp":"2025-01-20T10:30:00.000Z","values":{"t":%d}}' % i for i in range(1000)],
    "one": [b"x"],
    "long lines": [os.urandom(3000).hex().encode() for _ in range(5)],  # many SHA-256 blocks each
    "block edges": [b"a" * n for n in (55, 56, 63, 64, 65, 119, 120, 128)],  # padding corner cases
    "binary": [bytes(range(256)).replace(b"\n", b"")],
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("digests", [atoms.line_digests, atoms.python_line_digests], ids=["used", "python"])
def test_each_line_is_named_by_its_sha256_in_order(name: str, digests: object) -> None:
    lines = CASES[name]
    assert callable(digests)
    assert digests(b"\n".join(lines) + b"\n") == expected(lines)


@pytest.mark.parametrize("digests", [atoms.line_digests, atoms.python_line_digests], ids=["used", "python"])
def test_empty_lines_are_skipped_and_a_last_line_needs_no_newline(digests: object) -> None:
    assert callable(digests)
    assert digests(b"") == b""
    assert digests(b"\n\n") == b""
    assert digests(b"a\n\nb\n\n\nc") == expected([b"a", b"b", b"c"])


def test_the_extension_is_built_where_there_is_a_compiler() -> None:
    compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}): hashlib computes the digests")
    assert atoms.NATIVE, "the install did not build sluicegate._atoms: see the build's stderr (OpenSSL headers?)"
    assert atoms.line_digests is not atoms.python_line_digests
