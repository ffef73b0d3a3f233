"""``ecg-gateway results`` and ``ecg-gateway ecg``: look up what arrived and what the model said;
``ecg-gateway users``: people and their roles; ``ecg-gateway audit``: the audit log.

Nothing heavy is imported at module level (no numpy, no TensorFlow): these
commands must answer in about a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gateway.admin.table import print_results, printable
from gateway.cliconfig import config_from
from gateway.findings import listed as listed_findings

if TYPE_CHECKING:  # SQLAlchemy is loaded by the commands that use it (light --help)
    from sqlalchemy.orm import Session

results_app = typer.Typer(help="Query received ECGs and their results.", no_args_is_help=True)
ecg_app = typer.Typer(help="Export one ECG: the model's input array or the stored DICOM file.", no_args_is_help=True)

users_app = typer.Typer(
    help="People who sign in to the web view or call the API: add, list, disable, passwd, token. "
    "Roles: viewer reads; reader also confirms and edits results; admin also resends, exports and "
    "manages users.",
    no_args_is_help=True,
)
audit_app = typer.Typer(help="The audit log: who looked at or acted on what, when, from where.", no_args_is_help=True)

FORMATS = ("table", "json", "csv")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


def _session(ctx: typer.Context) -> Session:
    """A session on the configured database; exits 1 with a hint when it is
    unreachable or not migrated."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.store.db import make_engine, make_sessionmaker

    cfg = config_from(ctx)
    engine = make_engine(cfg.storage.database_url)
    try:
        with engine.connect() as conn:
            ready = inspect(conn).has_table("ecg_instances")
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc  # the driver's error, when there is one
        raise _fail(f"database unreachable: {type(cause).__name__}: {str(cause).splitlines()[0]}") from None
    if not ready:
        raise _fail("database not initialised: run `ecg-gateway db upgrade`")
    return make_sessionmaker(engine)()


def csv_text(rows: list[dict[str, Any]]) -> str:
    """The row dicts as CSV: one ``p_<code>`` column per probability,
    findings and quality flags joined with ``;``."""
    import csv
    import io

    from gateway.admin.queries import FINDING_CODES, ROW_KEYS

    header = [k for k in ROW_KEYS if k != "probabilities"]
    at = header.index("findings")
    header[at:at] = [f"p_{c}" for c in FINDING_CODES]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        probs = row["probabilities"] or {}
        flat = dict(row)
        flat.update({f"p_{c}": probs.get(c) for c in FINDING_CODES})
        flat["findings"] = ";".join(row["findings"])
        flat["quality_flags"] = ";".join(str(f) for f in row["quality_flags"])
        flat["demo_model"] = "true" if row["demo_model"] else "false"
        flat["measurements"] = ";".join(
            f"{k}={m.get('value')} {m.get('unit') or ''}".rstrip() for k, m in (row["measurements"] or {}).items()
        )
        flat["cart_statements"] = ";".join(str(t) for t in row["cart_statements"] or [])
        c = row["confirmation"]
        flat["confirmation"] = c["status"] + (f" by {c['by']} at {c['at']}" if c["by"] else "")
        writer.writerow(["" if flat[k] is None else flat[k] for k in header])
    return out.getvalue()


@results_app.command("list")
def list_results(
    ctx: typer.Context,
    patient_id: Annotated[str | None, typer.Option("--patient-id", help="DICOM Patient ID (exact).")] = None,
    accession: Annotated[str | None, typer.Option("--accession", help="Accession Number (exact).")] = None,
    since: Annotated[str | None, typer.Option(help="Received at or after (ISO 8601; naive = UTC).")] = None,
    until: Annotated[str | None, typer.Option(help="Received before (ISO 8601; naive = UTC).")] = None,
    status: Annotated[str | None, typer.Option(help="received, processed, rejected or failed.")] = None,
    finding: Annotated[str | None, typer.Option("--finding", help=f"{listed_findings(' or ')}.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100000, help="At most this many rows, newest first.")] = 100,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json or csv.")] = "table",
) -> None:
    """List ECGs with their status, findings and HL7 delivery status, newest first."""
    import json

    from gateway.admin.queries import QueryError, ecg_rows, parse_time
    from gateway.store.audit import audit, cli_actor

    if fmt not in FORMATS:
        raise _fail(f"--format: unknown format {fmt!r}; use {', '.join(FORMATS)}", 2)
    try:
        t0 = parse_time(since, "--since") if since else None
        t1 = parse_time(until, "--until") if until else None
        with _session(ctx) as session:
            rows = ecg_rows(
                session,
                patient_id=patient_id,
                accession=accession,
                since=t0,
                until=t1,
                status=status,
                finding=finding,
                limit=limit,
            )
            given = {
                "patient_id": patient_id,
                "accession": accession,
                "since": since,
                "until": until,
                "status": status,
                "finding": finding,
            }
            audit(
                session,
                cli_actor(),
                "view_list",
                None,
                via="cli",
                shown=[row["id"] for row in rows],
                filters={k: v for k, v in given.items() if v},
            )  # a view of patient data
            session.commit()
    except QueryError as exc:
        raise _fail(str(exc) if str(exc).startswith("--") else f"--{exc}", 2) from None
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
    elif fmt == "csv":
        import sys

        sys.stdout.write(csv_text(rows))  # exact data: echo() would strip what looks like ANSI codes
    else:
        print_results(rows)


@results_app.command("show")
def show_result(
    ctx: typer.Context,
    ecg: Annotated[str, typer.Argument(metavar="ID|SOP_UID", help="Database id or SOP Instance UID.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="text or json.")] = "text",
) -> None:
    """Everything about one ECG: patient, device, result, normalisation report, HL7 messages and ACKs."""
    import json

    from gateway.admin.queries import ecg_detail

    if fmt not in ("text", "json"):
        raise _fail(f"--format: unknown format {fmt!r}; use text, json", 2)
    from gateway.store.audit import audit, cli_actor

    with _session(ctx) as session:
        detail = ecg_detail(session, ecg)
        if detail is not None:  # a view of patient data
            audit(session, cli_actor(), "view_ecg", f"ecg:{detail['id']}", via="cli")
            session.commit()
    if detail is None:
        raise _fail(f"no ECG with id or SOP Instance UID {ecg!r}")
    if fmt == "json":
        typer.echo(json.dumps(detail, indent=2, ensure_ascii=False))
        return
    typer.echo(format_detail(detail))


def format_detail(d: dict[str, Any]) -> str:
    """The plain-text form of :func:`gateway.admin.queries.ecg_detail`."""
    import json

    from gateway.admin.queries import report_summary

    d = {k: printable(v) if isinstance(v, str) and k not in ("hl7_messages",) else v for k, v in d.items()}
    lines = [
        f"ECG {d['id']}  SOP Instance UID {d['sop_instance_uid']} (version {d['version']})",
        f"  status        {d['status']}" + (f" ({d['db_status']})" if d["db_status"] != d["status"] else ""),
    ]
    if d["error"]:
        lines.append(f"  error         {d['error']}")
    lines += [
        f"  received at   {d['received_at']}   processed at {d['processed_at'] or '-'}",
        f"  patient       {d['patient_name'] or '-'}  id {d['patient_id'] or '-'}"
        f"  born {d['patient_birth_date'] or '-'}"
        f"  sex {d['patient_sex'] or '-'}",
        f"  accession     {d['accession_number'] or '-'}   study {d['study_instance_uid'] or '-'}",
        f"  device        {d['manufacturer'] or '-'} {d['device_model'] or ''} (from {d['calling_ae'] or '-'}"
        f" at {d['peer_address'] or '-'})",
        f"  file          {d['size_bytes']} bytes, sha256 {d['sha256']}",
    ]
    if d["flags"]:
        lines.append(f"  flags         {', '.join(map(str, d['flags']))}")
    if d.get("measurements"):
        from gateway.report.measurements import display_value

        lines.append(
            "  cart measured "
            + printable(
                ", ".join(
                    f"{m.get('name') or k} {display_value(m)}" + (" (derived)" if m.get("source") == "derived" else "")
                    for k, m in d["measurements"].items()
                )
            )
        )
    if d.get("cart_statements"):
        lines.append("  cart says     " + printable("; ".join(map(str, d["cart_statements"]))))
    p = d["prediction"]
    if p:
        if d["demo_model"]:
            lines.append("  !! DEMO MODEL: untrained weights, not a reading !!")
        lines.append(f"  model         sha256 {d['model_sha256']}  gateway {p['gateway_version']}")
        lines.append(
            f"  model input   sha256 {p['input_sha256'] or 'not recorded'}  "
            f"normaliser {p['normaliser_version'] or 'not recorded (processed before 0003)'}"
        )
        lines.append("  finding  probability  threshold")
        for code, prob in d["probabilities"].items():
            thr = p["thresholds"].get(code)
            mark = "  *" if code in d["findings"] else ""
            prob_s = "-" if prob is None else f"{prob:.3f}"
            thr_s = "-" if thr is None else f"{thr:.3f}"
            lines.append(f"  {code:<7}  {prob_s:>11}  {thr_s:>9}{mark}")
        lines.append(f"  findings      {' '.join(d['findings']) or 'none'}")
        lines.append(f"  quality flags {', '.join(map(str, d['quality_flags'])) or 'none'}")
        # the physician over-read, every version (the AI's findings above stay as they were)
        versions = d.get("confirmations") or []
        state = d["confirmation"]["status"]
        lines.append(f"  over-read     {state}" + ("" if versions else " (the AI result is preliminary)"))
        for v in versions:
            lines.append(
                printable(
                    f"    v{v['version']} {v['at']} {v['status']} by {v['by_name'] or v['by']}"
                    f"{' (' + v['hl7_id'] + ')' if v['hl7_id'] else ''}: {' '.join(v['findings']) or 'none'}"
                    f"{' | ' + '; '.join(v['statements']) if v['statements'] else ''}"
                    f"{' | comment: ' + v['comment'] if v['comment'] else ''} (OBR-25 {v['result_status']})"
                )
            )
        if p["timings"]:
            lines.append("  timings       " + json.dumps(p["timings"]))
    report = (p["normalisation"] if p else d.get("report")) or {}
    if report:
        lines.append("  normalisation (full report: --format json)")
        lines += [f"    {label:<17} {printable(value)}" for label, value in report_summary(report)]
    lines.append(f"  HL7           {d['hl7_status']}")
    for m in d["hl7_messages"]:
        lines.append(
            f"  - message {m['id']} control id {m['control_id']}: {m['status']}, {m['attempts']} attempt(s)"
            + (f", resend of {m['resend_of']}" if m["resend_of"] else "")
            + (f", last error: {m['last_error']}" if m["last_error"] else "")
        )
        lines += ["      " + printable(seg) for seg in m["payload"].replace("\r\n", "\r").split("\r") if seg]
        if m["ack"]:
            lines.append("    ACK:")
            lines += ["      " + printable(seg) for seg in m["ack"].replace("\r\n", "\r").split("\r") if seg]
    return "\n".join(lines)


def _check_output(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise _fail(f"{out} exists; use --force to overwrite")
    if not out.parent.is_dir():
        raise _fail(f"folder not found: {out.parent}")


@ecg_app.command("export-input")
def export_input(
    ctx: typer.Context,
    ecg: Annotated[str, typer.Argument(metavar="ID|SOP_UID", help="Database id or SOP Instance UID.")],
    out: Annotated[Path, typer.Option("--output", "-o", help="The .npy file to write.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write the exact float32 (4096, 12) array the model saw, as .npy (audited).

    Rebuilt from the stored original and checked against the hash recorded with the result.
    """
    from gateway.admin.exports import ExportError, input_npy
    from gateway.store.audit import audit, cli_actor

    _check_output(out, force)
    from gateway.dicomio.limits import MIB

    cfg = config_from(ctx)
    spool_dir, max_bytes = cfg.storage.spool_dir, cfg.dicom.max_dataset_mb * MIB
    with _session(ctx) as session:
        try:
            ecg_id, data = input_npy(session, ecg, spool_dir, max_bytes)
        except ExportError as exc:
            raise _fail(str(exc)) from None
        out.write_bytes(data)
        audit(session, cli_actor(), "export_input", f"ecg:{ecg_id}", path=str(out.resolve()))
        session.commit()
    typer.echo(f"wrote {out} (ECG {ecg_id}, {len(data)} bytes)")


@ecg_app.command("export-report")
def export_report(
    ctx: typer.Context,
    ecg: Annotated[str, typer.Argument(metavar="ID|SOP_UID", help="Database id or SOP Instance UID.")],
    out: Annotated[Path, typer.Option("--output", "-o", help="The .pdf file to write.")],
    page: Annotated[str, typer.Option("--page", help="Paper size, landscape: A4 or letter.")] = "A4",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write the one-page 12-lead PDF report (audited).

    Tracing at 25 mm/s and 10 mm/mV on a true-scale grid (print at 100 %), the cart's
    measurements and statements, the AI findings against their thresholds, the model identity.
    """
    from gateway.admin.exports import ExportError, report_pdf
    from gateway.store.audit import audit, cli_actor

    if page not in ("A4", "letter"):
        raise _fail(f"--page: {page!r}; use A4 or letter", 2)
    _check_output(out, force)
    spool_dir = config_from(ctx).storage.spool_dir
    with _session(ctx) as session:
        try:
            ecg_id, data = report_pdf(session, ecg, spool_dir, page)
        except ExportError as exc:
            raise _fail(str(exc)) from None
        out.write_bytes(data)
        audit(session, cli_actor(), "export_report", f"ecg:{ecg_id}", path=str(out.resolve()), page=page)
        session.commit()
    typer.echo(f"wrote {out} (ECG {ecg_id}, {len(data)} bytes)")


@ecg_app.command("export-dicom")
def export_dicom(
    ctx: typer.Context,
    ecg: Annotated[str, typer.Argument(metavar="ID|SOP_UID", help="Database id or SOP Instance UID.")],
    out: Annotated[Path, typer.Option("--output", "-o", help="The .dcm file to write.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write the stored original DICOM file (a Philips XML or HL7 aECG document as received), checked
    against its sha256 (audited)."""
    from gateway.admin.exports import ExportError, original_dicom
    from gateway.store.audit import audit, cli_actor

    _check_output(out, force)

    spool_dir = config_from(ctx).storage.spool_dir
    with _session(ctx) as session:
        try:
            ecg_id, data = original_dicom(session, ecg, spool_dir)
        except ExportError as exc:
            raise _fail(str(exc)) from None
        out.write_bytes(data)
        audit(session, cli_actor(), "export_dicom", f"ecg:{ecg_id}", path=str(out.resolve()))
        session.commit()
    typer.echo(f"wrote {out} (ECG {ecg_id}, {len(data)} bytes)")


# --- users ------------------------------------------------------------------------------------------


def _read_password(confirm: bool = True) -> str:
    """The password: the first line of standard input when it is not a terminal
    (scripts: ``printf '%s\n' "$PW" | ecg-gateway users add ...``), else a hidden
    prompt asked twice."""
    import sys

    if not sys.stdin.isatty():
        line = sys.stdin.readline(4096)
        return line.rstrip("\r\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=confirm))


@users_app.command("add")
def users_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name: 1-64 of a-z 0-9 . _ - (the login and the audit log's who).")],
    role: Annotated[
        str,
        typer.Option(
            help="viewer (reads), reader (also confirms and edits results) or admin "
            "(also resends, exports, manages users)."
        ),
    ],
    full_name: Annotated[
        str | None,
        typer.Option("--full-name", help="As shown and sent in HL7 (e.g. 'Smith^Anna^^^Dr' or 'Dr Anna Smith')."),
    ] = None,
    hl7_id: Annotated[
        str | None,
        typer.Option("--hl7-id", help="The person's identifier for HL7 (OBR-32 / XCN.1, e.g. a licence number)."),
    ] = None,
    no_password: Annotated[bool, typer.Option("--no-password", help="No web login (an API token only).")] = False,
) -> None:
    """Add a user; the password comes from standard input or a prompt (audited)."""
    from gateway.admin.users import UserError, add_user, check_role, check_username
    from gateway.store.audit import cli_actor

    try:
        check_username(name)
        check_role(role)
    except UserError as exc:
        raise _fail(str(exc), 2) from None
    password = None if no_password else _read_password()
    with _session(ctx) as session:
        try:
            add_user(session, name, role, password, full_name=full_name, hl7_id=hl7_id, actor=cli_actor())
        except UserError as exc:
            raise _fail(str(exc), 2) from None
        session.commit()
    typer.echo(f"user {name} added ({role})")


@users_app.command("list")
def users_list(
    ctx: typer.Context,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
) -> None:
    """The users: name, role, full name, HL7 id, state, whether a password and an API token are set."""
    import json

    from sqlalchemy import select

    from gateway.store.models import ApiToken

    if fmt not in ("table", "json"):
        raise _fail(f"--format: unknown format {fmt!r}; use table, json", 2)
    from gateway.admin.users import list_users

    with _session(ctx) as session:
        with_token = set(session.scalars(select(ApiToken.user_id).where(ApiToken.revoked_at.is_(None))))
        rows = [
            {
                "username": u.username,
                "role": u.role,
                "full_name": u.full_name,
                "hl7_id": u.hl7_id,
                "disabled": u.disabled_at is not None,
                "password": u.password_hash is not None,
                "api_token": u.id in with_token,
                "created_at": u.created_at.isoformat(),
            }
            for u in list_users(session)
        ]
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        typer.echo("no users (add one: ecg-gateway users add NAME --role admin)")
    for r in rows:
        state = "disabled" if r["disabled"] else "active"
        extras = ", ".join(x for x in ("password" if r["password"] else "", "api token" if r["api_token"] else "") if x)
        typer.echo(
            f"{printable(r['username'])}\t{r['role']}\t{state}\t{printable(r['full_name'] or '-')}\t"
            f"hl7 id {printable(r['hl7_id'] or '-')}\t{extras or 'no credential'}"
        )


def _user_action(ctx: typer.Context, action: Any, name: str, *args: Any) -> None:
    from gateway.admin.users import UserError
    from gateway.store.audit import cli_actor

    with _session(ctx) as session:
        try:
            action(session, name, *args, actor=cli_actor())
        except UserError as exc:
            raise _fail(str(exc)) from None
        session.commit()


@users_app.command("disable")
def users_disable(ctx: typer.Context, name: Annotated[str, typer.Argument(help="User name.")]) -> None:
    """Disable a user: no login; their web sessions and API tokens stop working at once (audited)."""
    from gateway.admin.users import disable_user

    _user_action(ctx, disable_user, name)
    typer.echo(f"user {name} disabled")


@users_app.command("passwd")
def users_passwd(ctx: typer.Context, name: Annotated[str, typer.Argument(help="User name.")]) -> None:
    """Set a new password (standard input or a prompt); the user's web sessions end (audited)."""
    from gateway.admin.users import UserError, check_password_text, set_password

    password = _read_password()
    try:
        check_password_text(password)
    except UserError as exc:
        raise _fail(str(exc), 2) from None
    _user_action(ctx, set_password, name, password)
    typer.echo(f"password of {name} changed")


@users_app.command("token")
def users_token(ctx: typer.Context, name: Annotated[str, typer.Argument(help="User name.")]) -> None:
    """A new API token for NAME, printed once (only its hash is stored; earlier tokens stop working).
    Use it as ``Authorization: Bearer <token>``."""
    from gateway.admin.users import UserError, issue_token
    from gateway.store.audit import cli_actor

    with _session(ctx) as session:
        try:
            token = issue_token(session, name, actor=cli_actor())
        except UserError as exc:
            raise _fail(str(exc)) from None
        session.commit()
    typer.echo(token)
    typer.echo("shown once: store it now (only its hash is kept)", err=True)


# --- audit ------------------------------------------------------------------------------------------


@audit_app.command("list")
def audit_list(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option("--user", help="Who (a user name, token, cli:<os user>...).")] = None,
    ecg: Annotated[int | None, typer.Option("--ecg", min=1, max=2**31 - 1, help="ECG database id.")] = None,
    since: Annotated[str | None, typer.Option(help="At or after (ISO 8601; naive = UTC).")] = None,
    action: Annotated[
        str | None,
        typer.Option(help="e.g. view_ecg, view_list, export_report, hl7_resend, login, login_failed, user_add."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100000, help="At most this many rows, newest first.")] = 100,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
) -> None:
    """Audit rows, newest first: when, who, from where, what, which ECG."""
    import json

    from gateway.admin.queries import QueryError, parse_time
    from gateway.store.audit import AuditFilters, audit_rows

    if fmt not in ("table", "json"):
        raise _fail(f"--format: unknown format {fmt!r}; use table, json", 2)
    try:
        t0 = parse_time(since, "--since") if since else None
    except QueryError as exc:
        raise _fail(str(exc), 2) from None
    with _session(ctx) as session:
        rows = audit_rows(session, AuditFilters(actor=user, ecg_id=ecg, action=action, since=t0), limit=limit)
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False, default=str))
        return
    for r in rows:
        detail = json.dumps(r["detail"], ensure_ascii=False, separators=(",", ":"), default=str)
        typer.echo(
            "\t".join(
                printable(str(v))
                for v in (
                    r["at"].isoformat(timespec="seconds"),
                    r["actor"],
                    r["address"] or "-",
                    r["action"],
                    f"ecg {r['ecg_id']}" if r["ecg_id"] else "-",
                    r["target"] or "-",
                    detail,
                )
            )
        )
