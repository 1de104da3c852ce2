"""What an upload is (by its bytes) and the text extracted from it, for every supported type."""

from __future__ import annotations

import io
import os

import orjson
import pytest

from sluicegate.services.context.errors import EmptyDocument, ExtractionFailed, UnsupportedFileType
from sluicegate.services.context.extract import extract
from sluicegate.services.context.sniff import FileKind, sniff
from tests.documents import docx_of, pdf_of


def two_page_pdf() -> bytes:
    return pdf_of("First page. Orders ship in two days.", "Second page. The warranty lasts five years.")


def docx_bytes() -> bytes:
    rows = [["Size", "Stock", "Price"], ["M", "12", "10"]]
    return docx_of("Returns", "Return unworn items within 30 days.", rows, level=2, after="After the table.")


def kind_of(data: bytes) -> FileKind:
    return sniff(data).kind


def test_pdf_is_recognised_by_its_header_and_keeps_page_starts() -> None:
    data = two_page_pdf()
    assert kind_of(data) is FileKind.PDF
    extracted = extract(data, FileKind.PDF)
    assert extracted.pages == 2 and extracted.page_starts is not None
    second = extracted.text[extracted.page_starts[1] :]
    assert second.startswith("Second page.") and "First page" not in second
    assert extracted.text[: extracted.page_starts[1]].strip().endswith("two days.")


def test_docx_keeps_headings_as_markdown_and_tables_in_document_order() -> None:
    data = docx_bytes()
    assert kind_of(data) is FileKind.DOCX
    text = extract(data, FileKind.DOCX).text
    assert (
        text
        == "## Returns\n\nReturn unworn items within 30 days.\n\nSize | Stock | Price\nM | 12 | 10\n\nAfter the table."
    )


def test_csv_rows_become_column_value_lines() -> None:
    data = b"name,colour,price\nTrail shoe,red,89\nRain jacket,,120\n"
    assert kind_of(data) is FileKind.CSV
    extracted = extract(data, FileKind.CSV, sniff(data).text)
    assert extracted.line_mode
    assert extracted.text == "name: Trail shoe\ncolour: red\nprice: 89\n\nname: Rain jacket\nprice: 120"


def test_semicolon_and_tab_csv_are_csv_too() -> None:
    assert kind_of(b"a;b;c\n1;2;3\n4;5;6\n") is FileKind.CSV
    assert kind_of(b"a\tb\tc\n1\t2\t3\n") is FileKind.CSV


def test_json_is_flattened_to_path_value_lines() -> None:
    data = orjson.dumps({"store": {"name": "Harbour", "tags": ["a", "b"], "open": True, "none": None}})
    assert kind_of(data) is FileKind.JSON
    text = extract(data, FileKind.JSON).text
    assert text == "store.name: Harbour\nstore.tags[0]: a\nstore.tags[1]: b\nstore.open: true"


def test_a_json_array_and_ndjson_become_one_block_per_item() -> None:
    array = b'[{"id": 1, "name": "x"}, {"id": 2}]'
    assert extract(array, kind_of(array)).text == "[0].id: 1\n[0].name: x\n\n[1].id: 2"
    ndjson = b'{"id": 1}\n{"id": 2}\n'
    assert kind_of(ndjson) is FileKind.JSON
    assert extract(ndjson, FileKind.JSON).text == "[0].id: 1\n\n[1].id: 2"


def test_markdown_and_plain_text_are_told_apart_by_their_marks() -> None:
    assert kind_of(b"# Guide\n\n- one\n- two\n\nSee [docs](https://x.y).\n") is FileKind.MARKDOWN
    assert kind_of(b"```python\nprint(1)\n```\n\n**Note** this.\n") is FileKind.MARKDOWN
    assert kind_of(b"Just a letter. Hello, world.\nMore, here.\n") is FileKind.TEXT
    assert kind_of(b"Prices: 10, 20 and 30. #1 seller.\n") is FileKind.TEXT
    assert kind_of("Caf\u00e9 cr\u00e8me, sans sucre.".encode()) is FileKind.TEXT


def test_utf16_with_a_bom_and_utf8_with_a_bom_are_text() -> None:
    sniffed = sniff("Hello there.".encode("utf-16"))
    assert sniffed.kind is FileKind.TEXT and sniffed.text == "Hello there."
    assert sniff(b"\xef\xbb\xbfHello.").text == "Hello."


def test_the_name_is_not_consulted_a_pdf_header_wins() -> None:
    assert kind_of(b"junk before %PDF-1.7 the header") is FileKind.PDF


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (os.urandom(2048), UnsupportedFileType),
        (b"text with a \x00 NUL byte in it", UnsupportedFileType),
        (b"\x01\x02\x03\x04" * 20 + b"mostly control characters", UnsupportedFileType),
        (b"\xff\xd8\xff\xe0 a JPEG", UnsupportedFileType),
        (b"PK\x03\x04" + os.urandom(100), ExtractionFailed),
        (b"", EmptyDocument),
        (b" \n\t\n", EmptyDocument),
    ],
    ids=["random", "nul", "controls", "jpeg", "broken-zip", "zero-bytes", "whitespace"],
)
def test_unreadable_bytes_are_refused_with_a_specific_error(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        sniff(data)


def test_a_zip_that_is_not_a_docx_is_unsupported() -> None:
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(UnsupportedFileType, match="ZIP"):
        sniff(out.getvalue())


def test_a_corrupt_pdf_fails_extraction() -> None:
    data = two_page_pdf()
    for corrupt in (b"%PDF-1.4\n" + os.urandom(3000), data[: len(data) // 2]):
        with pytest.raises(ExtractionFailed) as caught:
            extract(corrupt, kind_of(corrupt))
        assert caught.value.stream_code == "EXTRACTION_FAILED"


def test_a_pdf_without_text_is_an_empty_document() -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    with pytest.raises(EmptyDocument, match="OCR"):
        extract(bytes(pdf.output()), FileKind.PDF)


def test_a_docx_with_broken_xml_fails_extraction() -> None:
    import zipfile

    source = zipfile.ZipFile(io.BytesIO(docx_bytes()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for item in source.infolist():
            body = source.read(item.filename)
            archive.writestr(item, b"<w:document><broken" if item.filename == "word/document.xml" else body)
    data = out.getvalue()
    assert kind_of(data) is FileKind.DOCX
    with pytest.raises(ExtractionFailed):
        extract(data, FileKind.DOCX)
