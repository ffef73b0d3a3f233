"""The results table as a terminal shows it: ``results list`` and the demo.

Rich is imported when a table is printed, not with the module (light commands).
"""

from __future__ import annotations

from typing import Any


def printable(value: object) -> str:
    """For terminals: control characters (ESC sequences in a patient name...) become ``?``."""
    if value is None:
        return ""
    return "".join("?" if (ord(c) < 32 and c not in "\t") or ord(c) == 127 else c for c in str(value))


def print_results(rows: list[dict[str, Any]]) -> None:
    """The rows of :func:`gateway.admin.queries.ecg_rows` as a table on stdout (``results list``, the demo)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    colour = {"processed": "green", "received": "cyan", "rejected": "yellow", "failed": "red"}
    table = Table(show_lines=False)
    for name in ("id", "received (UTC)", "patient id", "name", "accession", "status", "findings", "HL7", "note"):
        table.add_column(name, overflow="fold")
    for r in rows:
        note = "DEMO MODEL" if r["demo_model"] else (r["error"] or "")
        # Text(), not str: DICOM values are data, never rich markup.
        table.add_row(
            str(r["id"]),
            (r["received_at"] or "")[:19].replace("T", " "),
            Text(printable(r["patient_id"])),
            Text(printable(r["patient_name"])),
            Text(printable(r["accession_number"])),
            Text(r["status"], style=colour.get(r["status"], "")),
            " ".join(r["findings"]) or ("-" if r["probabilities"] else ""),
            r["hl7_status"],
            Text(printable(note), style="bold red" if r["demo_model"] else ""),
        )
    console = Console()
    if not console.is_terminal:  # piped: do not squeeze rows into 80 columns
        console = Console(width=max(console.width, 240))
    console.print(table)
    console.print(f"{len(rows)} row(s)")
