"""Parse untrusted XML with bounded memory and no outside access.

One parser for every XML input (lxml, libxml2): no network, no DTD loading,
no entity expansion, no huge-tree mode (libxml2 then refuses nesting deeper
than 256 and any text node over 10,000,000 bytes), and its entity
amplification check on.  A document with a DOCTYPE is refused whatever it
holds: none of the formats uses one, and it is where XML bombs and external
entities live.  The size of the whole document is checked by the caller
before it is read (``[dicom] max_dataset_mb``), so nothing larger is parsed; the
elements and attributes in it are counted (``<`` and ``=``) before parsing too.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from gateway.formats.errors import FormatError
from gateway.formats.sniff import has_doctype
from gateway.quoting import printable

_DOCTYPE = "{what}: a DOCTYPE (DTD) is not accepted in an ECG document (entity bombs and external entities live there)"


def _parser() -> Any:
    # a new parser per document: lxml parsers are not thread-safe
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def parse_xml(raw: bytes, what: str, max_elements: int, max_attributes: int) -> Any:
    """The root element of the XML document ``raw`` (bytes: the document's own
    BOM or declaration gives the encoding).  Raises :class:`FormatError`
    naming ``what`` and the parser's complaint for malformed XML, a DOCTYPE,
    an entity bomb, an over-long text node, more than ``max_elements``
    elements (counted as ``<`` characters) or more than ``max_attributes``
    attributes (counted as ``=`` characters), both before parsing."""
    if has_doctype(raw):  # refused before parsing: the parser never sees the entities
        raise FormatError(_DOCTYPE.format(what=what))
    # lxml needs ~120 bytes per element: 64 MB of "<a/>" would be 2 GB of tree.  Every element
    # starts with "<" (in UTF-16 too: 0x3C 0x00), so counting them bounds the tree before it is built.
    markup = raw.count(b"<")
    if markup > max_elements:
        raise FormatError(
            f"{what}: {markup} markup characters ('<'), more than the {max_elements} elements "
            "accepted in one ECG document"
        )
    # An attribute costs lxml ~250 bytes: a start tag of 10 MB holds 900,000 of them, and 26 MB of
    # such tags took 670 MB (a 64 MB file, 1.6 GB).  Each has "=" (0x3D; 0x3D 0x00 in UTF-16).
    equals = raw.count(b"=")
    if equals > max_attributes:
        raise FormatError(
            f"{what}: {equals} '=' characters, more than the {max_attributes} attributes accepted in one ECG document"
        )
    try:
        root = etree.fromstring(raw, _parser())
    except etree.XMLSyntaxError as exc:
        raise FormatError(f"{what}: not well-formed XML: {printable(str(exc), 200)}") from None
    except ValueError as exc:  # e.g. an unknown encoding declared
        raise FormatError(f"{what}: cannot be read as XML: {printable(str(exc), 200)}") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise FormatError(_DOCTYPE.format(what=what))
    return root


def local_name(element: Any) -> str:
    """An element's name without its namespace."""
    return str(etree.QName(element).localname)


def namespace(element: Any) -> str:
    """An element's namespace URI ("" when none)."""
    return str(etree.QName(element).namespace or "")
