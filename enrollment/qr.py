"""QR codes of enrolment links, for a screen (SVG) or a printed sheet (PNG)."""

import io

import segno


def qr_svg(text: str) -> bytes:
    buffer = io.BytesIO()
    segno.make(text, error="m").save(buffer, kind="svg", scale=6, border=4, xmldecl=True, title="Enrolment QR code")
    return buffer.getvalue()


def qr_png(text: str) -> bytes:
    buffer = io.BytesIO()
    segno.make(text, error="m").save(buffer, kind="png", scale=8, border=4)
    return buffer.getvalue()
