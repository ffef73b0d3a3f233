"""The over-read through HTTP (FastAPI TestClient over the real app and database,
SQLite and PostgreSQL): POST /api/ecgs/{id}/confirm by role, the worklist page,
the ECG page's confirm form with and without its CSRF token."""

from __future__ import annotations

import re

import hl7
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from admin_helpers import audit_rows, seed, session_csrf, web_login
from gateway.admin.app import create_app
from gateway.admin.users import add_user, issue_token
from gateway.config import Config
from gateway.store.models import Confirmation, EcgInstance, Hl7Message

TOKEN = "bootstrap-token-for-tests"
PASSWORD = "correct horse battery"


def make_cfg(db_url, tmp_path):
    return Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
            "admin": {"token": TOKEN},
            "hl7": {"interpreter_authority": "HOSP"},
        }
    )


@pytest.fixture
def world(db_url, session_factory, sample_path, tmp_path, monkeypatch):
    """Seeded ECGs, a reader, a viewer and an admin with API tokens, and a client."""
    from argon2 import PasswordHasher

    from gateway.admin import users

    # argon2id at its defaults takes 64 MiB and ~0.1 s a hash; the login is tested in the auth tests
    monkeypatch.setattr(users, "_hasher", lambda: PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    ids = seed(session_factory, sample_path, tmp_path / "spool")
    tokens = {}
    with session_factory() as s:
        for name, role, full, hl7_id in (
            ("arossi", "reader", "Anna Rossi", "D123"),
            ("vview", "viewer", None, None),
            ("root", "admin", "Ada Admin", "A1"),
        ):
            add_user(s, name, role, PASSWORD, full_name=full, hl7_id=hl7_id, actor="test")
            tokens[name] = issue_token(s, name, actor="test")
        s.commit()
    client = TestClient(create_app(make_cfg(db_url, tmp_path), session_factory))
    return ids, tokens, client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_reader_confirms_through_the_api(world, session_factory):
    ids, tokens, client = world
    e1 = ids["e1"]  # the AI said AF
    r = client.post(
        f"/api/ecgs/{e1}/confirm",
        headers=bearer(tokens["arossi"]),
        json={"findings": ["AF", "SB"], "statements": ["Sinus bradycardia with AF?"], "comment": "ok"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["status"], body["by"], body["by_name"], body["version"], body["result_status"], body["findings"]) == (
        "corrected",
        "arossi",
        "Anna Rossi",
        1,
        "F",
        ["SB", "AF"],
    )
    with session_factory() as s:
        payload = s.get(Hl7Message, body["hl7_message_id"]).payload
    obr = hl7.parse(payload).segment("OBR")
    assert str(obr[25]) == "F" and str(obr[32][0][0][0]) == "D123" and str(obr[32][0][0][1]) == "Rossi"
    # the rows say so, and the detail keeps every version beside the AI's own output
    rows = client.get("/api/ecgs", headers=bearer(tokens["vview"])).json()["items"]
    row = next(r for r in rows if r["id"] == e1)
    assert row["confirmation"]["status"] == "corrected" and row["confirmation"]["findings"] == ["SB", "AF"]
    assert row["findings"] == ["AF"]  # the AI's
    assert {r["confirmation"]["status"] for r in rows if r["id"] != e1} == {"unconfirmed"}
    detail = client.get(f"/api/ecgs/{e1}", headers=bearer(tokens["vview"])).json()
    assert [(c["version"], c["by"], c["statements"]) for c in detail["confirmations"]] == [
        (1, "arossi", ["Sinus bradycardia with AF?"])
    ]
    # an admin (a person) may confirm too: version 2, a correction of the final
    r = client.post(f"/api/ecgs/{ids['e1']}/confirm", headers=bearer(tokens["root"]), json={"findings": ["AF"]})
    assert r.status_code == 200 and (r.json()["version"], r.json()["result_status"]) == (2, "C")
    actions = [(a.actor, a.action) for a in audit_rows(session_factory) if a.action.startswith("ecg_confirm")]
    assert actions == [("arossi", "ecg_confirm"), ("root", "ecg_confirm_edit")]


REFUSALS = [
    ("vview", {"findings": ["AF"]}, "e1", 403, "needs the reader role"),
    (TOKEN, {"findings": ["AF"]}, "e1", 403, "bootstrap [admin] token cannot confirm"),
    ("arossi", {"findings": ["AF"]}, "e3", 409, "no AI result"),  # rejected
    ("arossi", {"findings": ["AF"]}, "e5", 409, "no AI result"),  # still processing
    ("arossi", {"findings": ["AF", "VT"]}, "e1", 422, "unknown finding code 'VT'"),
    ("arossi", {"findings": ["AF"], "statements": ["x" * 501]}, "e1", 422, "longer than 500"),
    ("arossi", {"findings": ["AF"], "comment": "c" * 2001}, "e1", 422, "at most 2000"),
    ("arossi", {"findings": ["AF"], "extra": 1}, "e1", 422, "extra"),
    ("arossi", {}, "e1", 422, "findings"),
    ("arossi", {"findings": ["AF"] * 13}, "e1", 422, "findings"),
    ("arossi", {"findings": ["AF"]}, "4040404", 404, "no ECG"),
    (None, {"findings": ["AF"]}, "e1", 401, "not signed in"),
]


def test_refusals_change_nothing(world, session_factory):
    ids, tokens, client = world
    for who, body, key, status, message in REFUSALS:
        headers = {} if who is None else bearer(tokens.get(who, who))
        r = client.post(f"/api/ecgs/{ids.get(key, key)}/confirm", headers=headers, json=body)
        assert r.status_code == status, (who, body, key, r.text)
        assert message in r.text, (who, body, key, r.text)
    with session_factory() as s:
        assert s.scalars(select(Confirmation)).all() == []
        assert len(s.scalars(select(Hl7Message).where(Hl7Message.ecg_id == ids["e1"])).all()) == 1


def login_as(client, username: str) -> None:
    r = web_login(client, username=username, password=PASSWORD, next_="/worklist")
    assert r.status_code == 200, r.text


def test_worklist_page_oldest_first_with_filters_and_count(world, session_factory):
    ids, _, client = world
    with session_factory() as s, s.begin():
        s.get(EcgInstance, ids["e2"]).ward = "Cardiology 3B"
    login_as(client, "vview")
    page = client.get("/worklist")
    assert page.status_code == 200
    assert re.search(r'worklist-count">3<', page.text)
    shown = re.findall(r'<td><a href="/ecgs/(\d+)">', page.text)
    assert shown == [str(ids["e1"]), str(ids["e2"]), str(ids["e6"])]
    assert '<option value="Cardiology 3B">' in page.text
    page = client.get("/worklist", params={"ward": "Cardiology 3B"})
    assert re.findall(r'<td><a href="/ecgs/(\d+)">', page.text) == [str(ids["e2"])]
    page = client.get("/worklist", params={"finding": "AF"})
    assert re.findall(r'<td><a href="/ecgs/(\d+)">', page.text) == [str(ids["e1"])]
    assert client.get("/worklist", params={"finding": "VT"}).status_code == 400
    views = [a for a in audit_rows(session_factory) if a.action == "view_worklist"]
    assert (
        len(views) == 3 and views[0].actor == "vview" and views[0].detail["shown"] == [ids["e1"], ids["e2"], ids["e6"]]
    )


def test_the_confirm_form_needs_its_csrf_token_and_a_reader(world, session_factory):
    ids, _, client = world
    e1 = ids["e1"]
    login_as(client, "arossi")
    page = client.get(f"/ecgs/{e1}")
    assert f'form method="post" action="/ecgs/{e1}/confirm" class="confirm"' in page.text
    assert 'name="findings" value="AF" checked' in page.text
    form = {"findings": ["SB"], "statements": "Sinus bradycardia\n\n  slow  ", "comment": ""}
    refused = client.post(f"/ecgs/{e1}/confirm", data=form, follow_redirects=False)
    assert refused.status_code == 403 and "CSRF" in refused.text
    done = client.post(f"/ecgs/{e1}/confirm", data={**form, "csrf_token": session_csrf(client)}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/worklist?confirmed={e1}&version=1"
    with session_factory() as s:
        c = s.scalars(select(Confirmation)).one()
        assert (c.findings, c.statements, c.comment, c.username) == (
            ["SB"],
            ["Sinus bradycardia", "slow"],
            None,
            "arossi",
        )
    page = client.get(f"/ecgs/{e1}")
    assert "Corrected by <strong>Anna Rossi</strong>" in page.text and 'class="confirmation-version"' in page.text
    listed = client.get("/ecgs").text  # the list says which results a physician has read
    assert listed.count('class="badge confirmation corrected"') == 1
    assert listed.count('class="badge confirmation unconfirmed"') == 2  # the other two processed ECGs
    # confirm as is: the AI's findings, whatever the boxes say
    again = client.post(
        f"/ecgs/{e1}/confirm",
        data={"findings": ["ST"], "as_is": "1", "csrf_token": session_csrf(client)},
        follow_redirects=False,
    )
    assert again.status_code == 303
    with session_factory() as s:
        latest = s.scalars(select(Confirmation).order_by(Confirmation.version.desc())).first()
        assert (latest.version, latest.findings, latest.outcome, latest.result_status) == (2, ["AF"], "confirmed", "C")
    # a viewer sees no form and is refused with a valid token of their own
    viewer = TestClient(client.app)
    login_as(viewer, "vview")
    page = viewer.get(f"/ecgs/{e1}")
    assert 'class="confirm"' not in page.text and "Only a reader can confirm" in page.text
    refused = viewer.post(
        f"/ecgs/{e1}/confirm", data={"findings": ["AF"], "csrf_token": session_csrf(viewer)}, follow_redirects=False
    )
    assert refused.status_code == 403 and "needs the reader role" in refused.text
    # a rejected ECG: 409 page
    refused = client.post(
        f"/ecgs/{ids['e3']}/confirm",
        data={"findings": ["AF"], "csrf_token": session_csrf(client)},
        follow_redirects=False,
    )
    assert refused.status_code == 409 and "no AI result" in refused.text
    with session_factory() as s:
        assert len(s.scalars(select(Confirmation)).all()) == 2
