"""The SHA-256 digests that name atoms: one per line of canonical records.

One call hashes a whole upload or batch. The compiled ``sluicegate._atoms`` (built at
install when a C compiler and OpenSSL's headers are there) does it about five times
faster than a hashlib object per record, without holding the GIL; :data:`NATIVE` says
which one runs. Both give the same bytes.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["NATIVE", "line_digests", "python_line_digests"]


def python_line_digests(lines: bytes) -> bytes:
    """The 32-byte SHA-256 of each non-empty line (split on ``\\n``), concatenated in order."""
    sha = hashlib.sha256
    return b"".join([sha(line).digest() for line in lines.split(b"\n") if line])


def _compiled() -> Callable[[bytes], bytes] | None:
    try:
        from sluicegate import _atoms  # optional: built at install
    except ImportError:  # built without a compiler: hashlib gives the same digests
        return None
    return _atoms.line_digests


_native = _compiled()

#: Whether the compiled extension computes the digests.
NATIVE = _native is not None

line_digests: Callable[[bytes], bytes] = _native if _native is not None else python_line_digests
