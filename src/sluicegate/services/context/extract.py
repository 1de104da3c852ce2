"""The text of an uploaded file, by its sniffed type (blocking: callers run it in a thread).

- **PDF** (``pypdf``): each page's text, pages joined by a blank line; the start offset of
  every page is kept, so chunks know their page (numbered from 1).
- **DOCX** (``python-docx``): paragraphs and tables in document order; a ``Heading n``
  paragraph becomes a Markdown heading (``#`` n times) so the chunker treats it as a
  boundary; a table row becomes ``cell | cell | cell``.
- **CSV**: the first row names the columns; every later row becomes a block of
  ``column: value`` lines (empty values left out), blocks separated by a blank line.
- **JSON** (and NDJSON): flattened to one ``path: value`` line per scalar, the path in
  JavaScript notation (``products[0].name: Trail shoe``; a top-level scalar is just
  ``value``); each top-level array item (or NDJSON line) is a block of its own.
- **Markdown** and **plain text**: as they are (line endings normalised to ``\\n``).

CSV and JSON text is *line-structured*: every line is a unit the chunker never splits
from its neighbours in the middle, nor joins into a sentence.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sluicegate.services.context.errors import EmptyDocument, ExtractionFailed
from sluicegate.services.context.sniff import FileKind, decode_text

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Extracted", "extract"]

# pypdf reports every recoverable oddity of a damaged file as a warning log line.
logging.getLogger("pypdf").setLevel(logging.ERROR)


@dataclass(frozen=True, slots=True)
class Extracted:
    """Extracted text.

    Attributes:
        text: the document's text.
        page_starts: offset in ``text`` where each page starts (PDF only), ascending.
        line_mode: every line is a unit of its own (CSV, JSON).
    """

    text: str
    page_starts: tuple[int, ...] | None = None
    line_mode: bool = False

    @property
    def pages(self) -> int | None:
        return None if self.page_starts is None else len(self.page_starts)


def extract(data: bytes, kind: FileKind, text: str | None = None) -> Extracted:
    """The text of ``data`` (``text``: its decoded text, when the sniffer already made it).

    Raises:
        ExtractionFailed: the parser of ``kind`` refused the file.
        EmptyDocument: the file holds no text.
    """
    if kind is FileKind.PDF:
        extracted = _pdf(data)
    elif kind is FileKind.DOCX:
        extracted = Extracted(_docx(data))
    else:
        source = _normalise(text if text is not None else decode_text(data))
        if kind is FileKind.CSV:
            extracted = Extracted(_csv(source), line_mode=True)
        elif kind is FileKind.JSON:
            extracted = Extracted(_json(source), line_mode=True)
        else:
            extracted = Extracted(source)
    if not extracted.text.strip():
        raise EmptyDocument(
            "The PDF has no text layer (a scanned document needs OCR first)"
            if kind is FileKind.PDF
            else "The file holds no text"
        )
    return extracted


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _pdf(data: bytes) -> Extracted:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ExtractionFailed("The PDF is encrypted with a password")
        texts = [_normalise(page.extract_text() or "").strip() for page in reader.pages]
    except ExtractionFailed:
        raise
    except Exception as exc:  # pypdf raises many types (PdfReadError, ValueError, KeyError...) for damaged files
        raise ExtractionFailed(f"The PDF cannot be read ({type(exc).__name__})") from None
    if not texts:
        raise ExtractionFailed("The PDF has no pages")
    starts: list[int] = []
    offset = 0
    for page_text in texts:
        starts.append(offset)
        offset += len(page_text) + 2
    return Extracted("\n\n".join(texts), tuple(starts))


def _docx(data: bytes) -> str:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(io.BytesIO(data))
        blocks: list[str] = []
        for item in document.iter_inner_content():
            if isinstance(item, Paragraph):
                blocks.append(_docx_paragraph(item))
            elif isinstance(item, Table):
                blocks.append(_docx_table(item))
    except Exception as exc:  # python-docx and lxml raise many types for a damaged package
        raise ExtractionFailed(f"The DOCX document cannot be read ({type(exc).__name__})") from None
    return "\n\n".join(block for block in blocks if block)


def _docx_paragraph(paragraph: Any) -> str:
    text = _normalise(paragraph.text).strip()
    style = getattr(getattr(paragraph, "style", None), "name", "") or ""
    if text and style.startswith("Heading"):
        level = style.removeprefix("Heading").strip()
        return "#" * (int(level) if level.isdigit() and 1 <= int(level) <= 6 else 1) + " " + text
    if text and style == "Title":
        return "# " + text
    return text


def _docx_table(table: Any) -> str:
    lines = []
    for row in table.rows:
        cells: list[str] = []
        for cell in row.cells:
            value = " ".join(_normalise(cell.text).split())
            if not cells or cells[-1] != value:  # merged cells repeat their text
                cells.append(value)
        if any(cells):
            lines.append(" | ".join(cells))
    return "\n".join(lines)


def _csv(text: str) -> str:
    sample = text[: 64 * 1024]
    try:
        dialect = csv.Sniffer().sniff(sample[: sample.rfind("\n") + 1] or sample, delimiters=",;\t")
        rows = list(csv.reader(io.StringIO(text), dialect))
    except csv.Error as exc:
        raise ExtractionFailed(f"The CSV cannot be read ({exc})") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        return ""
    header = [name.strip() or f"column {n + 1}" for n, name in enumerate(rows[0])]
    blocks = []
    for row in rows[1:]:
        lines = []
        for n, value in enumerate(row):
            value = " ".join(value.split())
            if value:
                name = header[n] if n < len(header) else f"column {n + 1}"
                lines.append(f"{name}: {value}")
        if lines:
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _json(text: str) -> str:
    try:
        top: Any = json.loads(text)
    except ValueError:
        try:
            top = [json.loads(line) for line in text.splitlines() if line.strip()]  # NDJSON: as an array
        except ValueError as exc:
            raise ExtractionFailed(f"The JSON cannot be read ({exc})") from None
    if isinstance(top, list):
        return "\n\n".join("\n".join(_flatten(item, f"[{n}]")) for n, item in enumerate(top))
    return "\n".join(_flatten(top, ""))


def _flatten(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            name = str(key)
            child = f"{path}.{name}" if path else name
            yield from _flatten(item, child)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            yield from _flatten(item, f"{path}[{n}]")
    else:
        shown = "" if value is None else value if isinstance(value, str) else json.dumps(value)
        shown = " ".join(str(shown).split())
        if shown:
            yield f"{path}: {shown}" if path else shown
