def line_digests(data: bytes, /) -> bytes:
    """The 32-byte SHA-256 digests of the non-empty lines of ``data``, concatenated in order."""
