"""Real documents made in the tests: PDFs with fpdf2, DOCX files with python-docx."""

from __future__ import annotations

import io


def pdf_of(*pages: str) -> bytes:
    """A PDF with one page per text (Helvetica, 12 pt)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def docx_of(heading: str, paragraph: str, rows: list[list[str]], *, level: int = 1, after: str | None = None) -> bytes:
    """A DOCX: a heading, a paragraph, a table of ``rows``, and optionally a paragraph after it."""
    import docx

    document = docx.Document()
    document.add_heading(heading, level=level)
    document.add_paragraph(paragraph)
    table = document.add_table(rows=len(rows), cols=len(rows[0]))
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    if after is not None:
        document.add_paragraph(after)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()
