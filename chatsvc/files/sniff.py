"""What a file is, decided from its first bytes (magic numbers), never from the name or the client's claim.

Only the types chatsvc can recognise may be allowed (``CHATSVC_UPLOAD_TYPES``):
an image type the browser will render, PDF, plain UTF-8 text, zip, and the
office formats (OOXML documents are zip archives told apart by the folder of
their first entries; the older Word, Excel and PowerPoint files share one
container format and are all ``application/x-ole-storage`` here).
"""

from __future__ import annotations

import re
import struct

# How many leading bytes the sniffer wants; fewer only when the file is shorter.
SNIFF_BYTES = 8192

PNG = "image/png"
JPEG = "image/jpeg"
GIF = "image/gif"
WEBP = "image/webp"
PDF = "application/pdf"
TEXT = "text/plain"
ZIP = "application/zip"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
ODT = "application/vnd.oasis.opendocument.text"
ODS = "application/vnd.oasis.opendocument.spreadsheet"
OLE = "application/x-ole-storage"

IMAGE_TYPES = frozenset({PNG, JPEG, GIF, WEBP})
KNOWN_TYPES = (PNG, JPEG, GIF, WEBP, PDF, TEXT, ZIP, DOCX, XLSX, PPTX, ODT, ODS, OLE)
DEFAULT_ALLOWED = KNOWN_TYPES

# The folder an OOXML package keeps its main part in.
_OOXML_FOLDERS = {b"word/": DOCX, b"xl/": XLSX, b"ppt/": PPTX}
_ZIP_ENTRY = b"PK\x03\x04"
# Control characters that plain text does not hold (tab, newline, form feed and carriage return it may).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def sniff(head: bytes, *, complete: bool) -> str | None:
    """The content type of a file that starts with ``head``, or None if it is none of the known types.

    ``complete`` says ``head`` is the whole file, so a text file cut short in
    the middle of a character is not mistaken for binary.
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head.startswith(b"%PDF-"):
        return PDF
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return OLE
    if head.startswith(_ZIP_ENTRY) or head.startswith(b"PK\x05\x06"):
        return _zip_kind(head)
    if _is_text(head, complete=complete):
        return TEXT
    return None


def _zip_kind(head: bytes) -> str:
    """Which zip-based format: an OpenDocument names its type in its first entry, OOXML by its folders."""
    offset = 0
    for _ in range(16):
        if head[offset : offset + 4] != _ZIP_ENTRY or offset + 30 > len(head):
            break
        compressed, _size, name_length, extra_length = struct.unpack_from("<IIHH", head, offset + 18)
        name = head[offset + 30 : offset + 30 + name_length]
        data_at = offset + 30 + name_length + extra_length
        if name == b"mimetype":
            declared = head[data_at : data_at + compressed]
            if declared == ODT.encode():
                return ODT
            if declared == ODS.encode():
                return ODS
        for folder, kind in _OOXML_FOLDERS.items():
            if name.startswith(folder):
                return kind
        offset = data_at + compressed
    return ZIP


def _is_text(head: bytes, *, complete: bool) -> bool:
    """UTF-8 with no control characters but tab, newline, carriage return and form feed."""
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sniffed bytes is still text.
        if complete or exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    return _CONTROL.search(text) is None
