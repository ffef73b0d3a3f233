"""Red team: hostile confirmations through POST /api/ecgs/{id}/confirm and the
confirm form (SQLite and PostgreSQL): text the database cannot hold is a 422
naming the field (was a 500: NUL in a PostgreSQL text column, an unpaired
surrogate on both), HL7 delimiters, CR/LF and control characters in
statements, comment and the reader's full name leave one ORU whose segment
count and values an independent parser (python-hl7, hl7apy) reads back, and
the ECG page shows the statements escaped."""

from __future__ import annotations

import hl7
import pytest
from fastapi.testclient import TestClient
from hl7apy.parser import parse_message
from sqlalchemy import select

from admin_helpers import seed, session_csrf, web_login
from deliver_helpers import joined_texts
from gateway.admin.app import create_app
from gateway.admin.users import add_user, issue_token
from gateway.config import Config
from gateway.deliver.oru import replace_controls, to_charset
from gateway.store.models import Confirmation, Hl7Message

PASSWORD = "correct horse battery"


@pytest.fixture
def world(db_url, session_factory, sample_path, tmp_path, monkeypatch):
    from argon2 import PasswordHasher

    from gateway.admin import users

    monkeypatch.setattr(users, "_hasher", lambda: PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    ids = seed(session_factory, sample_path, tmp_path / "spool")
    with session_factory() as s:
        # a full name full of HL7 delimiters (the users command allows them; only control characters are refused)
        add_user(s, "odd", "reader", PASSWORD, full_name="Mc|Brien^Jr~X\\Y&Z Ann-Marie", hl7_id="D-9", actor="test")
        token = issue_token(s, "odd", actor="test")
        s.commit()
    cfg = Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
            "admin": {"token": "bootstrap-redteam"},
            "hl7": {"interpreter_authority": "HOSP"},
        }
    )
    client = TestClient(create_app(cfg, session_factory), raise_server_exceptions=False)
    return ids, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, client


UNSTORABLE = [
    (b'{"findings":["AF"],"comment":"a\\u0000b"}', "comment"),
    (b'{"findings":["AF"],"statements":["ok","a\\u0000b"]}', "statements"),
    (b'{"findings":["AF"],"statements":["\\udfff"]}', "statements"),
]
#: JSON the request parser itself refuses; its 422 echoes the input (was a 500: no UTF-8 for a surrogate)
INVALID_JSON_TEXT = b'{"findings":["AF"],"comment":"a\\ud800b"}'


def test_text_the_database_cannot_hold_is_a_422_and_stores_nothing(world, session_factory):
    ids, headers, client = world
    for body, field in UNSTORABLE:
        r = client.post(f"/api/ecgs/{ids['e1']}/confirm", headers=headers, content=body)
        assert r.status_code == 422, (body, r.status_code, r.text)
        assert r.json()["detail"] == f"{field}: a NUL character or an unpaired surrogate (not text)"
    r = client.post(f"/api/ecgs/{ids['e1']}/confirm", headers=headers, content=INVALID_JSON_TEXT)
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"
    assert r.json()["detail"][0]["loc"][0] == "body"
    # the web form too (a NUL in the comment was a 500 on PostgreSQL)
    web = TestClient(client.app, raise_server_exceptions=False)
    assert web_login(web, username="odd", password=PASSWORD, next_="/worklist").status_code == 200
    r = web.post(
        f"/ecgs/{ids['e1']}/confirm",
        data={"findings": ["AF"], "comment": "a\x00b", "csrf_token": session_csrf(web)},
        follow_redirects=False,
    )
    assert r.status_code == 422 and "comment: a NUL character" in r.text
    with session_factory() as s:
        assert s.scalars(select(Confirmation)).all() == []
        assert len(s.scalars(select(Hl7Message).where(Hl7Message.ecg_id == ids["e1"])).all()) == 1


HOSTILE = [
    "a|b^c~d\\e&f\rMSH|^~\\&|EVIL|||\nOBX|1|ST|X||y",
    "\x01\x1b[31m\x7f<b>\u2028\u0085nel",
    "\\H\\bold\\N\\ é 中文 😀",
    "|" * 500,
]


def test_hostile_statements_stay_inside_one_oru(world, session_factory):
    ids, headers, client = world
    baseline = None
    for n, text in enumerate(HOSTILE, start=1):
        r = client.post(
            f"/api/ecgs/{ids['e1']}/confirm",
            headers=headers,
            json={"findings": ["AF"], "statements": [text, "second"], "comment": text},
        )
        assert r.status_code == 200, (text, r.text)
        assert r.json()["version"] == n
        with session_factory() as s:
            payload = s.get(Hl7Message, r.json()["hl7_message_id"]).payload
            stored = s.scalars(select(Confirmation).where(Confirmation.version == n)).one()
            assert stored.statements == [text.strip(), "second"] and stored.comment == text.strip()
        message = hl7.parse(payload)
        names = [str(seg[0]) for seg in message]
        assert payload.count("MSH|") == 1 and names[0] == "MSH" and names.count("MSH") == 1
        assert len(payload.rstrip("\r").split("\r")) == len(names)
        # the same shape whatever the text, but for the TX pieces of a text over 199 characters
        texts = {"8601-7", "READER_COMMENT"}
        shape = [n for n, seg in zip(names, message, strict=True) if n != "OBX" or str(seg[3][0][0]) not in texts]
        if baseline is None:
            baseline = shape
        assert shape == baseline, text
        # an independent parser reads every segment back as one of the message's own
        assert [seg.name for seg in parse_message(payload, find_groups=False).children] == names
        obr = message.segment("OBR")
        # OBR-32 of a full name with every delimiter: the id, then the escaped name, one component each
        assert str(obr[32][0][0][0]) == "D-9" and str(obr[32][0][0][-1]) == "HOSP"
        assert "Mc\\F\\Brien\\S\\Jr\\R\\X\\E\\Y\\T\\Z" in str(obr[32])
        # each text read back whole (TX pieces joined), control characters replaced
        sent = to_charset(replace_controls(text.strip()), "UNICODE UTF-8", "OBX-5", replace=True)
        assert joined_texts(message, "8601-7") == [sent, "second"]
        assert joined_texts(message, "READER_COMMENT") == [sent]
        assert "\n" not in payload


def test_the_ecg_page_escapes_statements(world, session_factory):
    ids, headers, client = world
    attack = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&"
    r = client.post(
        f"/api/ecgs/{ids['e1']}/confirm",
        headers=headers,
        json={"findings": ["AF"], "statements": [attack], "comment": attack},
    )
    assert r.status_code == 200
    web = TestClient(client.app)
    assert web_login(web, username="odd", password=PASSWORD, next_="/worklist").status_code == 200
    page = web.get(f"/ecgs/{ids['e1']}")
    assert page.status_code == 200
    assert "<script>" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "Mc|Brien^Jr~X\\Y&amp;Z Ann-Marie" in page.text
