"""What an uploaded file is, told by its bytes (never by its name or declared type).

In this order, first match wins:

1. **PDF**: ``%PDF-`` within the first 1,024 bytes (the spec tolerates junk before it).
2. **DOCX**: a ZIP archive (``PK\\x03\\x04``) holding ``word/document.xml``. Another ZIP is
   unsupported; bytes that start like a ZIP but do not open are a failed extraction.
3. Otherwise the bytes must be text: UTF-8 (a BOM is dropped) or UTF-16 with a BOM, with
   no NUL and at most 1% other control characters (tab, newlines and form feed excepted).
   Anything else is :class:`UnsupportedFileType`; whitespace only is :class:`EmptyDocument`.
4. **JSON**: an object or array that parses (or NDJSON: every line an object or array).
5. **CSV**: :class:`csv.Sniffer` finds a ``,``, ``;`` or tab delimiter in a 64 KiB sample,
   the sample's rows all have the same number of columns (three or more over two rows or
   more, or two over three rows or more), and the header's cells are short and do not end
   like sentences (``.``, ``!``, ``?``).
   ``|`` is not a delimiter here, so Markdown tables stay Markdown.
6. **Markdown**: headings, list items, links, code fences, bold text and table rows add to a
   score; a document with a heading, a fence or a link and a score of 3 or more is Markdown,
   and so is one whose first line is a heading (``# Title``).
7. **Plain text**: everything else that decoded.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import re
import zipfile
from dataclasses import dataclass

from sluicegate.services.context.errors import EmptyDocument, ExtractionFailed, UnsupportedFileType

__all__ = ["FileKind", "Sniffed", "decode_text", "sniff"]


class FileKind(enum.StrEnum):
    """A recognised type, by its media type (the documents list's ``contentType``)."""

    PDF = "application/pdf"
    DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    JSON = "application/json"
    CSV = "text/csv"
    MARKDOWN = "text/markdown"
    TEXT = "text/plain"


@dataclass(frozen=True, slots=True)
class Sniffed:
    """The type of a file and, for the text types, its decoded text."""

    kind: FileKind
    text: str | None = None


#: Bytes of a text file whose control characters are counted, and how many may be.
_CONTROL_SAMPLE = 1 << 20
_CONTROL_RATIO = 0.01
_ALLOWED_CONTROLS = frozenset("\t\n\r\f")
_CSV_SAMPLE = 64 * 1024
_CSV_DELIMITERS = ",;\t"

_HEADING = re.compile(r"^#{1,6}[ \t]+\S", re.MULTILINE)
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d{1,3}[.)])[ \t]+\S", re.MULTILINE)
_LINK = re.compile(r"!?\[[^\]\n]+\]\([^)\s]+\)")
_FENCE = re.compile(r"^[ \t]*(?:```|~~~)", re.MULTILINE)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")
_TABLE_ROW = re.compile(r"^[ \t]*\|.*\|[ \t]*$", re.MULTILINE)


def sniff(data: bytes) -> Sniffed:
    """The :class:`FileKind` of ``data`` (see the module docs for the rules).

    Raises:
        UnsupportedFileType: binary content of no recognised type, or another ZIP.
        ExtractionFailed: bytes that start like a ZIP archive but do not open as one.
        EmptyDocument: text with nothing but whitespace in it (or no bytes at all).
    """
    if b"%PDF-" in data[:1024]:
        return Sniffed(FileKind.PDF)
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError, ValueError):
            raise ExtractionFailed("The file starts like a ZIP (DOCX) archive but cannot be opened") from None
        if "word/document.xml" in names:
            return Sniffed(FileKind.DOCX)
        raise UnsupportedFileType("A ZIP archive that is not a Word (DOCX) document is not supported")
    text = decode_text(data)
    return Sniffed(_text_kind(text), text)


def decode_text(data: bytes) -> str:
    """``data`` as text, if it is text (UTF-8, or UTF-16 with a BOM).

    Raises:
        UnsupportedFileType: not valid text, or too many control characters for text.
        EmptyDocument: nothing but whitespace.
    """
    try:
        utf16 = data.startswith((b"\xff\xfe", b"\xfe\xff"))
        text = data.decode("utf-16").removeprefix("\ufeff") if utf16 else data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UnsupportedFileType(
            "The file is not a supported type: PDF, DOCX, or UTF-8 text (plain, Markdown, CSV, JSON)"
        ) from None
    sample = text[:_CONTROL_SAMPLE]
    controls = sum(1 for ch in sample if (ch < " " and ch not in _ALLOWED_CONTROLS) or ch == "\x7f")
    if "\x00" in sample or controls > len(sample) * _CONTROL_RATIO:
        raise UnsupportedFileType("The file holds binary data, not text, and is of no supported type")
    if not text.strip():
        raise EmptyDocument("The file holds no text")
    return text


def _text_kind(text: str) -> FileKind:
    if _is_json(text):
        return FileKind.JSON
    if _is_csv(text):
        return FileKind.CSV
    if _is_markdown(text):
        return FileKind.MARKDOWN
    return FileKind.TEXT


def _is_json(text: str) -> bool:
    stripped = text.strip()
    if stripped[:1] not in ("{", "["):
        return False
    try:
        json.loads(stripped)
    except ValueError:
        pass
    else:
        return True
    lines = [line for line in stripped.splitlines() if line.strip()]
    if len(lines) < 2:
        return False
    try:
        return all(isinstance(json.loads(line), dict | list) for line in lines)
    except ValueError:
        return False


def _is_csv(text: str) -> bool:
    sample = text[:_CSV_SAMPLE]
    if len(text) > _CSV_SAMPLE:
        sample = sample[: sample.rfind("\n") + 1]  # whole lines only
    lines = [line for line in sample.splitlines() if line.strip()]
    if len(lines) < 2:
        return False
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=_CSV_DELIMITERS)
        rows = [row for row in csv.reader(io.StringIO(sample), dialect) if row]
    except csv.Error:
        return False
    widths = {len(row) for row in rows}
    if len(rows) < 2 or len(widths) != 1:
        return False
    width = widths.pop()
    # Prose with one comma a line is not a table: a header names columns, it does not end sentences.
    header_ok = all(len(cell) <= 100 and not cell.rstrip().endswith((".", "!", "?")) for cell in rows[0])
    return header_ok and (width >= 3 or (width == 2 and len(rows) >= 3))


def _is_markdown(text: str) -> bool:
    headings = len(_HEADING.findall(text))
    links = len(_LINK.findall(text))
    fences = len(_FENCE.findall(text))
    score = 2 * headings + 2 * links + 2 * fences
    score += len(_LIST_ITEM.findall(text)) + len(_BOLD.findall(text)) + len(_TABLE_ROW.findall(text)) // 2
    starts_with_heading = _HEADING.match(text.lstrip()) is not None
    return starts_with_heading or (bool(headings or links or fences) and score >= 3)
