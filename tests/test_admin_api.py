"""The admin HTTP API and web view (FastAPI TestClient over the real app and database)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from admin_helpers import XSS_NAME, audit_rows, model_input, seed, session_csrf, web_login
from gateway.admin.app import create_app
from gateway.admin.auth import SESSION_COOKIE, check_admin_bind
from gateway.config import AdminConfig, Config
from gateway.store.db import make_engine, make_sessionmaker

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PHI = ("DOE^JANE", "DOE, JANE", "ROE^RICHARD", "ROE, RICHARD", "P1", "A1")  # names raw and as pages write them


def make_cfg(db_url, tmp_path, token=TOKEN, **admin):
    return Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
            "admin": {"token": token, **admin},
        }
    )


@pytest.fixture
def seeded(session_factory, sample_path, tmp_path):
    return seed(session_factory, sample_path, tmp_path / "spool")


@pytest.fixture
def client(db_url, session_factory, seeded, tmp_path):
    return TestClient(create_app(make_cfg(db_url, tmp_path), session_factory))


@pytest.fixture
def ro_sf(readonly_db):
    return readonly_db.session_factory


@pytest.fixture
def ro_ids(readonly_db):
    return readonly_db.ids


@pytest.fixture
def ro_client(readonly_db):
    """A fresh client (no cookies) on the shared read-only database."""
    return TestClient(create_app(make_cfg(readonly_db.url, readonly_db.spool_dir.parent), readonly_db.session_factory))


def api_routes(seeded):
    e1, m1 = seeded["e1"], seeded["m1"]
    return [
        ("GET", "/api/ecgs"),
        ("GET", f"/api/ecgs/{e1}"),
        ("GET", f"/api/ecgs/{e1}/input.npy"),
        ("GET", f"/api/ecgs/{e1}/original.dcm"),
        ("GET", f"/api/ecgs/{e1}/report.pdf"),
        ("POST", f"/api/hl7/{m1}/resend"),
    ]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}]
)
def test_every_api_route_needs_the_token(ro_client, ro_ids, ro_sf, headers):
    before = len(audit_rows(ro_sf))
    for method, path in api_routes(ro_ids):
        r = ro_client.request(method, path, headers=headers)
        assert r.status_code == 401, (method, path)
        assert r.headers["www-authenticate"] == "Bearer"
        assert not any(v in r.text for v in PHI)
    assert len(audit_rows(ro_sf)) == before


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"])
def test_no_api_docs_by_default(ro_client, path):
    """/docs and /redoc load Swagger/ReDoc script from a CDN: never served; the schema only on request."""
    for headers in ({}, AUTH):
        r = ro_client.get(path, headers=headers)
        assert r.status_code == 404 and "swagger" not in r.text.lower() and "cdn" not in r.text


def test_openapi_schema_when_enabled_needs_the_token(readonly_db, tmp_path):
    c = TestClient(create_app(make_cfg(readonly_db.url, tmp_path, openapi=True), readonly_db.session_factory))
    assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
    r = c.get("/openapi.json")
    assert r.status_code == 401 and "paths" not in r.text
    assert c.get("/openapi.json", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/openapi.json", headers=AUTH).json()["info"]["title"] == "ECG gateway admin API"
    login(c)  # a signed-in browser may read it too
    assert "/api/ecgs" in c.get("/openapi.json").json()["paths"]


def test_openapi_lists_every_api_route_as_bearer_protected(readonly_db, tmp_path, ro_ids):
    c = TestClient(create_app(make_cfg(readonly_db.url, tmp_path, openapi=True), readonly_db.session_factory))
    schema = c.get("/openapi.json", headers=AUTH).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    templates = [
        "/api/ecgs",
        "/api/ecgs/{ecg}",
        "/api/ecgs/{ecg}/input.npy",
        "/api/ecgs/{ecg}/original.dcm",
        "/api/ecgs/{ecg}/report.pdf",
        "/api/hl7/{message_id}/resend",
    ]
    for (method, _path), template in zip(api_routes(ro_ids), templates, strict=True):
        assert schema["paths"][template][method.lower()]["security"] == [{"HTTPBearer": []}]


def test_without_a_configured_token_the_api_and_web_are_off(readonly_db, tmp_path):
    c = TestClient(create_app(make_cfg(readonly_db.url, tmp_path, token=""), readonly_db.session_factory))
    for method, path in api_routes(readonly_db.ids):
        r = c.request(method, path, headers={"Authorization": "Bearer "})
        assert r.status_code == 403 and "set [admin] token" in r.json()["detail"]
    r = c.get("/ecgs", follow_redirects=False)
    assert r.status_code == 403 and "set [admin] token" in r.text and "DOE" not in r.text
    assert c.post("/login", data={"token": ""}).status_code == 403
    r = c.get("/healthz")  # answers without a token (503: the seeded failed HL7 message); no PHI there
    assert r.status_code == 503 and r.json()["components"]["hl7"]["failed"] == 1


def test_list_paginates(ro_client, ro_ids):
    r = ro_client.get("/api/ecgs", params={"limit": 4}, headers=AUTH)
    body = r.json()
    assert r.status_code == 200
    assert [i["id"] for i in body["items"]] == [ro_ids[k] for k in ("e6", "e5", "e4", "e3")]
    assert (body["total"], body["limit"], body["offset"], body["next_offset"]) == (6, 4, 0, 4)
    body = ro_client.get("/api/ecgs", params={"limit": 4, "offset": 4}, headers=AUTH).json()
    assert [i["id"] for i in body["items"]] == [ro_ids["e2"], ro_ids["e1"]]
    assert body["next_offset"] is None
    assert ro_client.get("/api/ecgs", headers=AUTH).headers["cache-control"] == "no-store"
    assert ro_client.get("/api/ecgs", params={"limit": 0}, headers=AUTH).status_code == 422


@pytest.mark.parametrize(
    "params, expected, total",
    [
        ({"patient_id": "P3"}, ["e5", "e4"], 2),
        ({"accession": "A6"}, ["e6"], 1),
        ({"since": "2026-01-05T00:00:00+00:00"}, ["e6", "e5"], 2),
        ({"until": "2026-01-02"}, ["e1"], 1),
        ({"status": "failed"}, ["e4"], 1),
        ({"finding": "LBBB"}, ["e2"], 1),
        ({"status": "processed", "limit": 1}, ["e6"], 3),
    ],
)
def test_list_filters(ro_client, ro_ids, params, expected, total):
    body = ro_client.get("/api/ecgs", params=params, headers=AUTH).json()
    assert [i["id"] for i in body["items"]] == [ro_ids[k] for k in expected]
    assert body["total"] == total


@pytest.mark.parametrize(
    "params, message",
    [
        ({"status": "lost"}, "status: unknown status 'lost'"),
        ({"finding": "MI"}, "finding: unknown finding 'MI'"),
        ({"since": "last week"}, "since: not an ISO 8601 date or date-time"),
    ],
)
def test_bad_filters_are_422_with_the_reason(ro_client, params, message):
    r = ro_client.get("/api/ecgs", params=params, headers=AUTH)
    assert r.status_code == 422 and message in r.json()["detail"]


def test_detail(ro_client, ro_ids):
    r = ro_client.get(f"/api/ecgs/{ro_ids['e2']}", headers=AUTH)
    d = r.json()
    assert d["patient_name"] == XSS_NAME and d["demo_model"] is True and d["hl7_status"] == "pending"
    assert [m["status"] for m in d["hl7_messages"]] == ["superseded", "pending"]
    assert ro_client.get("/api/ecgs/1.2.826.0.1.3680043.10.1.1", headers=AUTH).json()["id"] == ro_ids["e1"]
    r = ro_client.get("/api/ecgs/77777", headers=AUTH)
    assert r.status_code == 404 and "no ECG" in r.json()["detail"]


def test_input_npy_export_is_exact_and_audited(client, seeded, session_factory, sample_path):
    r = client.get(f"/api/ecgs/{seeded['e1']}/input.npy", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), model_input(sample_path)[0])
    (row,) = audit_rows(session_factory)
    assert (row.actor, row.action, row.target) == ("token", "export_input", f"ecg:{seeded['e1']}")
    assert row.at is not None
    r = client.get(f"/api/ecgs/{seeded['e4']}/input.npy", headers=AUTH)
    assert r.status_code == 409 and "has no model input (status failed" in r.json()["detail"]
    assert len(audit_rows(session_factory)) == 1


def test_original_dicom_export_is_audited(client, seeded, session_factory, sample_path):
    r = client.get(f"/api/ecgs/{seeded['e1']}/original.dcm", headers=AUTH)
    assert r.status_code == 200 and r.content == sample_path.read_bytes()
    assert [a.action for a in audit_rows(session_factory)] == ["export_dicom"]


def test_resend_queues_a_new_message_and_writes_an_audit_row(client, seeded, session_factory):
    r = client.post(f"/api/hl7/{seeded['m1']}/resend", headers=AUTH)
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["resend_of"] == seeded["m1"] and new["status"] == "pending" and new["ecg_id"] == seeded["e1"]
    (row,) = audit_rows(session_factory)
    assert (row.actor, row.action, row.target) == ("token", "hl7_resend", f"hl7_message:{seeded['m1']}")
    assert row.detail["new_message_id"] == new["id"]
    d = client.get(f"/api/ecgs/{seeded['e1']}", headers=AUTH).json()
    assert d["hl7_status"] == "pending" and d["hl7_messages"][-1]["id"] == new["id"]
    r = client.post("/api/hl7/98765/resend", headers=AUTH)
    assert r.status_code == 404 and "98765" in r.json()["detail"]


def test_healthz_ok_and_metrics(ro_client, ro_ids, readonly_db):
    r = ro_client.get("/healthz")  # the seeded failed HL7 message makes it unhealthy (the default)
    body = r.json()
    assert r.status_code == 503 and body["status"] == "unhealthy"
    assert body["components"]["database"] == {"ok": True}
    assert body["components"]["spool"]["ok"] is True and body["components"]["spool"]["writable"] is True
    hl7 = body["components"]["hl7"]
    assert (hl7["ok"], hl7["pending"], hl7["failed"], hl7["link"]) == (False, 1, 1, "not in this process")
    assert hl7["problems"] == ["1 failed message(s): see ecg-gateway hl7 list, then hl7 resend"]
    ok_client = TestClient(
        create_app(
            make_cfg(readonly_db.url, readonly_db.spool_dir.parent, healthz_fail_on_failed_hl7=False),
            readonly_db.session_factory,
        )
    )
    r = ok_client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.json()["components"]["hl7"]["failed"] == 1  # still shown
    text = ro_client.get("/metrics").text
    assert 'ecg_gateway_ecgs{status="processed"} 3.0' in text
    assert 'ecg_gateway_ecgs{status="processing"} 1.0' in text
    assert "ecg_gateway_queue_depth 1.0" in text
    assert 'ecg_gateway_hl7_messages{status="superseded"} 1.0' in text
    assert "ecg_gateway_database_up 1.0" in text
    assert not any(v in text or v in json.dumps(body) for v in ("DOE^JANE", "ROE^RICHARD", "DOE, JANE", "ROE, RICHARD"))


def test_healthz_is_503_when_the_database_is_unreachable(tmp_path):
    from conftest import free_port

    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"  # nobody listens there
    engine = make_engine(url, connect_args={"connect_timeout": 2})
    c = TestClient(create_app(make_cfg(url, tmp_path), make_sessionmaker(engine)))
    r = c.get("/healthz")
    body = r.json()
    assert r.status_code == 503 and body["status"] == "unhealthy"
    assert body["components"]["database"]["ok"] is False
    assert "OperationalError" in body["components"]["database"]["error"]
    assert body["components"]["hl7"]["ok"] is False
    assert body["components"]["hl7"]["problems"] == ["database unreachable"]
    assert "ecg_gateway_database_up 0.0" in c.get("/metrics").text
    engine.dispose()


@pytest.mark.parametrize(
    "states, status",
    [
        ({"scp_listening": True, "model_loaded": True}, 200),
        ({"scp_listening": True, "model_loaded": "not in this process"}, 200),
        ({"scp_listening": False, "model_loaded": True}, 503),
        ({"scp_listening": True, "model_loaded": "loading models/model.hdf5"}, 503),
    ],
)
def test_healthz_includes_what_serve_reports(readonly_db, tmp_path, states, status):
    cfg = make_cfg(readonly_db.url, tmp_path, healthz_fail_on_failed_hl7=False)  # the seeded failed message aside
    c = TestClient(create_app(cfg, readonly_db.session_factory, health=lambda: states))
    r = c.get("/healthz")
    assert r.status_code == status
    assert {k: r.json()["components"][k]["ok"] for k in states} == {
        k: v is True or v == "not in this process" for k, v in states.items()
    }


def test_healthz_hl7_backlog_limit(db_url, session_factory, seeded, tmp_path):
    quiet = {"healthz_fail_on_failed_hl7": False}  # the seeded failed message is not the point here
    c = TestClient(create_app(make_cfg(db_url, tmp_path, max_hl7_backlog=0, **quiet), session_factory))
    assert c.get("/healthz").status_code == 200  # 0 = off
    c = TestClient(create_app(make_cfg(db_url, tmp_path, max_hl7_backlog=1, **quiet), session_factory))
    assert c.get("/healthz").status_code == 200  # 1 pending
    client = TestClient(create_app(make_cfg(db_url, tmp_path), session_factory))
    client.post(f"/api/hl7/{seeded['m1']}/resend", headers=AUTH)  # 2 pending now
    r = c.get("/healthz")
    hl7 = r.json()["components"]["hl7"]
    assert r.status_code == 503 and (hl7["ok"], hl7["pending"], hl7["max_pending"]) == (False, 2, 1)
    assert hl7["problems"] == ["2 messages pending (max 1)"]


@pytest.mark.parametrize(
    "host, token, refused",
    [
        ("127.0.0.1", "", False),
        ("localhost", "", False),
        ("::1", "", False),
        ("127.0.0.2", "", False),
        ("0.0.0.0", "", True),
        ("10.1.2.3", "", True),
        ("::", "", True),
        ("admin.example.org", "", True),
        ("0.0.0.0", "secret", False),
    ],
)
def test_check_admin_bind(host, token, refused):
    problem = check_admin_bind(AdminConfig(host=host, token=token))
    assert (problem is not None) == refused
    if refused:
        assert f"admin.host is {host}" in problem and "set [admin] token" in problem


# --- web view -----------------------------------------------------------------------------------


def login(client, token=TOKEN, next_="/ecgs"):
    return web_login(client, token, next_)


def test_web_needs_login_and_sets_a_random_strict_cookie(ro_client, ro_ids):
    r = ro_client.get(f"/ecgs/{ro_ids['e1']}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/login?next=%2Fecgs%2F{ro_ids['e1']}"
    assert login(ro_client, "wrong").status_code == 401
    assert SESSION_COOKIE not in ro_client.cookies
    r = login(ro_client, next_=f"/ecgs/{ro_ids['e1']}")
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie and "Max-Age" not in cookie.title()  # plain http; ends with the browser
    assert TOKEN not in cookie
    first = ro_client.cookies[SESSION_COOKIE]
    assert len(first) >= 43 and first != login(TestClient(ro_client.app)).cookies[SESSION_COOKIE]  # random
    assert f'url=/ecgs/{ro_ids["e1"]}"' in r.text  # moves on by itself
    assert ro_client.get(f"/ecgs/{ro_ids['e1']}").status_code == 200
    r = ro_client.post("/logout", data={"csrf_token": session_csrf(ro_client)}, follow_redirects=False)
    assert r.status_code == 303 and 'ecg_gateway_admin=""' in r.headers["set-cookie"]
    assert ro_client.get("/ecgs", follow_redirects=False).status_code == 303


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/x",
        "https://evil.example/",
        "javascript:alert(1)",
        "/\\evil",
        "/\t/127.0.0.1:2691/pwned",
        "/\n/evil.example",
        " //evil.example",
        "///evil",
    ],
)
def test_login_does_not_redirect_off_site(ro_client, target):
    r = login(ro_client, next_=target)
    assert r.status_code == 200 and 'url=/ecgs"' in r.text
    page = ro_client.get("/login", params={"next": target}).text
    assert 'name="next" value="/ecgs"' in page and "evil" not in page and "2691" not in page


def test_a_cookie_from_another_token_is_refused(ro_client, readonly_db, tmp_path):
    other = TestClient(
        create_app(make_cfg(readonly_db.url, tmp_path, token="another-token"), readonly_db.session_factory)
    )
    login(other, "another-token")
    ro_client.cookies.set(SESSION_COOKIE, other.cookies[SESSION_COOKIE])
    assert ro_client.get("/ecgs", follow_redirects=False).status_code == 303


def test_list_page(ro_client, ro_ids):
    login(ro_client)
    page = ro_client.get("/ecgs").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert 'class="status-processed has-findings"' in page and 'class="badge status failed"' in page
    assert 'class="badge hl7 delivered"' in page and 'class="badge demo"' in page
    page = ro_client.get("/ecgs", params={"finding": "AF"}).text
    # names as a person reads them: "Family, Given", not the DICOM PN
    assert "DOE, JANE" in page and "DOE^JANE" not in page and "ROE, RICHARD" not in page and "1 ECG(s)" in page
    r = ro_client.get("/ecgs", params={"status": "lost"})
    assert r.status_code == 400 and "unknown status" in r.text


def test_list_page_paginates(ro_client, ro_ids, monkeypatch):
    import gateway.admin.web as web

    monkeypatch.setattr(web, "PAGE_SIZE", 4)
    login(ro_client)
    page = ro_client.get("/ecgs", params={"patient_id": "", "status": ""}).text
    assert "6 ECG(s), page 1 of 2" in page and 'href="/ecgs?page=2"' in page and "&larr; newer" not in page
    assert f'href="/ecgs/{ro_ids["e3"]}"' in page and f'href="/ecgs/{ro_ids["e2"]}"' not in page
    page = ro_client.get("/ecgs", params={"page": 2}).text
    assert f'href="/ecgs/{ro_ids["e2"]}"' in page and 'href="/ecgs?page=1"' in page and "older &rarr;" not in page
    page = ro_client.get("/ecgs", params={"patient_id": "P3", "page": 1}).text
    assert "2 ECG(s)" in page and "page 1 of" not in page


def test_ecg_page(ro_client, ro_ids):
    login(ro_client)
    page = ro_client.get(f"/ecgs/{ro_ids['e2']}").text
    r = ro_client.get(f"/ecgs/{ro_ids['e2']}")
    assert "script-src 'none'" in r.headers["content-security-policy"]  # no script runs
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "unsafe-inline" not in r.headers["content-security-policy"] and "style=" not in r.text
    assert f"<title>ECG {ro_ids['e2']} - processed - ECG gateway</title>" in r.text
    assert r.headers["cache-control"] == "no-store"
    assert 'class="banner demo"' in page and "DEMO MODEL" in page
    assert page.count('class="lead-panel"') == 12 and page.count('class="rhythm-strip"') == 1
    assert 'data-finding="RBBB"' in page and "0.800" in page and "0.070" in page
    assert "V1: flat line" in page and "output_leads" in page
    assert "<dt>Padding</dt><dd>48 before, 48 after</dd>" in page and "1000.0 Hz -&gt; 400 Hz" in page
    assert "&lt;script&gt;" in page and "<script>alert" not in page
    page = ro_client.get(f"/ecgs/{ro_ids['e1']}").text
    assert "DEMO MODEL" not in page and "MSA|AA|CTRL1" in page and "Resend" in page
    # issue 16 §1: name formatted, birth date with the age at the recording, the cart's time, finding names
    assert '<span class="patient-name">DOE, JANE</span>' in page and "DOE^JANE" not in page
    assert "1971-01-23 (42 y)" in page and "2013-01-25 10:59:19" in page and "<dd>female</dd>" in page
    assert 'AF <span class="finding-name">Atrial fibrillation</span>' in page
    assert '<span class="badge finding">AF</span> Atrial fibrillation' in page
    # the measurements panel: value, LOINC, source; the derived rate says so; the statements apart
    assert '<tr data-measurement="qtc_interval">' in page and "370 ms" in page and "8636-3" in page
    assert "52\u00b0" in page and "8638-9" in page and "cart (SCPECG:5.13.5-7)" in page
    assert "61 /min" in page and "derived by the gateway from the RR interval" in page
    assert '<ul class="cart-statements"><li>RITMO SINUSALE</li><li>ECG NORMALE</li></ul>' in page
    assert "Not read for this ECG" in ro_client.get(f"/ecgs/{ro_ids['e6']}").text  # a row from before 0008
    page = ro_client.get(f"/ecgs/{ro_ids['e3']}").text
    assert "recording too short" in page and "No model input stored" in page
    assert "<dt>Source</dt><dd>500.0 Hz, 4.0 s, 12 channels</dd>" in page  # a rejection keeps its report
    assert ro_client.get("/ecgs/4040404").status_code == 404


def _resends(session_factory):
    return [a for a in audit_rows(session_factory) if a.action == "hl7_resend"]


def test_web_resend(client, seeded, session_factory):
    login(client)
    form = {"message_id": seeded["m1"], "csrf_token": session_csrf(client)}
    r = client.post(f"/ecgs/{seeded['e1']}/resend", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith(f"/ecgs/{seeded['e1']}?resent=")
    (row,) = _resends(session_factory)
    assert (row.actor, row.action, row.address, row.ecg_id) == ("token", "hl7_resend", "testclient", seeded["e1"])
    r = client.post(
        f"/ecgs/{seeded['e1']}/resend", data=form, headers={"Origin": "https://evil.example"}, follow_redirects=False
    )
    assert r.status_code == 403 and len(_resends(session_factory)) == 1
    r = client.post(
        f"/ecgs/{seeded['e1']}/resend", data=form, headers={"Origin": "https://testserver"}, follow_redirects=False
    )
    assert r.status_code == 403 and len(_resends(session_factory)) == 1  # https origin, plain http request
    r = client.post(
        f"/ecgs/{seeded['e1']}/resend",
        data=form,
        headers={"Origin": "https://testserver", "X-Forwarded-Proto": "https"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and len(_resends(session_factory)) == 2  # behind a TLS proxy
    for bad in ({"message_id": seeded["m1"]}, {**form, "csrf_token": "0" * 64}):  # no or a wrong CSRF token
        r = client.post(f"/ecgs/{seeded['e1']}/resend", data=bad, follow_redirects=False)
        assert r.status_code == 403 and "CSRF" in r.text and len(_resends(session_factory)) == 2


# --- sessions: logout revokes, expiry, Secure -------------------------------------------------


def _session_rows(session_factory):
    from sqlalchemy import select

    from gateway.store.models import AdminSession

    with session_factory() as s:
        return list(s.scalars(select(AdminSession).order_by(AdminSession.id)))


def test_logout_revokes_the_session_and_a_replayed_cookie_is_refused(client, seeded, session_factory):
    login(client)
    stolen = client.cookies[SESSION_COOKIE]
    assert client.get(f"/ecgs/{seeded['e1']}").status_code == 200
    (row,) = _session_rows(session_factory)
    assert (row.principal, row.client_address, row.revoked_at) == ("token", "testclient", None)
    r = client.post("/logout", data={"csrf_token": session_csrf(client)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert f'{SESSION_COOKIE}=""' in r.headers["set-cookie"]
    (row,) = _session_rows(session_factory)
    assert row.revoked_at is not None
    replay = TestClient(client.app)  # the old cookie, sent again (copied before logout)
    replay.cookies.set(SESSION_COOKIE, stolen)
    for path in ("/ecgs", f"/ecgs/{seeded['e1']}"):
        r = replay.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path
        assert "DOE^JANE" not in r.text and "DOE, JANE" not in r.text
    r = replay.post(
        f"/ecgs/{seeded['e1']}/resend",
        data={"message_id": seeded["m1"], "csrf_token": session_csrf(replay)},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=") and _resends(session_factory) == []


def test_an_expired_session_is_refused(db_url, session_factory, seeded, tmp_path):
    from datetime import timedelta

    from gateway.store.models import AdminSession

    c = TestClient(create_app(make_cfg(db_url, tmp_path, session_hours=0.5), session_factory))
    login(c)
    (row,) = _session_rows(session_factory)
    assert row.expires_at - row.created_at == timedelta(minutes=30)  # [admin] session_hours
    assert c.get("/ecgs").status_code == 200
    with session_factory() as s:  # half an hour later
        s.get(AdminSession, row.id).expires_at -= timedelta(minutes=31)
        s.commit()
    r = c.get("/ecgs", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fecgs"
    login(c)  # a new login is a new session
    assert c.get("/ecgs").status_code == 200 and len(_session_rows(session_factory)) == 2


def test_the_old_token_derived_cookie_is_refused(ro_client):
    import hashlib
    import hmac

    old = hmac.new(TOKEN.encode(), b"ecg-gateway admin session v1", hashlib.sha256).hexdigest()
    ro_client.cookies.set(SESSION_COOKIE, old)  # what every admin's browser held before sessions
    assert ro_client.get("/ecgs", follow_redirects=False).status_code == 303


def test_login_again_replaces_the_browsers_session(client, session_factory):
    login(client)
    first = client.cookies[SESSION_COOKIE]
    login(client)
    assert client.cookies[SESSION_COOKIE] != first
    assert [r.revoked_at is not None for r in _session_rows(session_factory)] == [True, False]


@pytest.mark.parametrize(
    "mode, base, headers, secure",
    [
        ("auto", "http://testserver", {}, False),
        ("auto", "https://testserver", {}, True),
        ("auto", "http://testserver", {"X-Forwarded-Proto": "https"}, True),
        ("auto", "http://testserver", {"Forwarded": "for=10.0.0.1;proto=https"}, True),
        ("auto", "http://testserver", {"X-Forwarded-Proto": "http"}, False),
        ("always", "http://testserver", {}, True),
        ("never", "https://testserver", {"X-Forwarded-Proto": "https"}, False),
    ],
)
def test_session_cookie_is_secure_over_https(readonly_db, tmp_path, mode, base, headers, secure):
    c = TestClient(
        create_app(make_cfg(readonly_db.url, tmp_path, cookie_secure=mode), readonly_db.session_factory), base_url=base
    )
    r = web_login(c, TOKEN, headers=headers)
    assert r.status_code == 200
    assert ("; Secure" in r.headers["set-cookie"]) is secure
    r = c.post("/logout", data={"csrf_token": session_csrf(c)}, headers=headers, follow_redirects=False)
    assert ("; Secure" in r.headers["set-cookie"]) is secure


# --- numeric parameters: bounded, 422 (never a 500) ----------------------------------------------

BIG = [2**31, 2**63, 2**64, 10**30]


@pytest.mark.parametrize(
    "params",
    [
        *({"offset": v} for v in [-1, *BIG]),
        *({"limit": v} for v in [0, -1, 1001, *BIG]),
        {"offset": "1e3"},
        {"limit": "ten"},
    ],
)
def test_api_list_bounds(ro_client, params):
    r = ro_client.get("/api/ecgs", params=params, headers=AUTH)
    assert r.status_code == 422, r.text
    (name,) = params
    assert r.json()["detail"][0]["loc"] == ["query", name]


def test_api_list_largest_offset_is_fine(ro_client):
    body = ro_client.get("/api/ecgs", params={"offset": 2**31 - 1, "limit": 1000}, headers=AUTH).json()
    assert body["items"] == [] and body["total"] == 6 and body["next_offset"] is None


@pytest.mark.parametrize("key", ["0", "2147483648", str(2**63), str(2**64), "9" * 64, "1" * 65, "1.2." * 20])
@pytest.mark.parametrize("suffix", ["", "/input.npy", "/original.dcm"])
def test_api_ecg_key_bounds(ro_client, ro_sf, key, suffix):
    before = len(audit_rows(ro_sf))
    r = ro_client.get(f"/api/ecgs/{key}{suffix}", headers=AUTH)
    assert r.status_code == 422, (key, r.text)
    detail = r.json()["detail"]
    assert "out of range" in detail if isinstance(detail, str) else detail[0]["loc"] == ["path", "ecg"]
    assert len(audit_rows(ro_sf)) == before


@pytest.mark.parametrize("key", ["2147483647", "\u00b2", "\u0663", "00000000000000000000000001"])
def test_api_ecg_keys_inside_the_bounds_are_404(ro_client, key):
    """Largest id, and digits that are not ASCII ("²".isdigit() is True in Python): not found, no 500."""
    assert ro_client.get(f"/api/ecgs/{key}", headers=AUTH).status_code == 404


@pytest.mark.parametrize("message_id", ["0", "-1", "2147483648", str(2**63), str(10**30), "x"])
def test_api_resend_id_bounds(ro_client, message_id):
    r = ro_client.post(f"/api/hl7/{message_id}/resend", headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "message_id"]


def test_api_resend_largest_id_is_404(ro_client):
    assert ro_client.post("/api/hl7/2147483647/resend", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    "path, status",
    [
        ("/ecgs?page=0", 422),
        ("/ecgs?page=-1", 422),
        ("/ecgs?page=1000001", 422),
        (f"/ecgs?page={2**63}", 422),
        ("/ecgs?page=x", 422),
        ("/ecgs?page=1000000", 200),
        ("/ecgs/0", 422),
        (f"/ecgs/{2**31}", 422),
        (f"/ecgs/{2**63}", 422),
        ("/ecgs/" + "1" * 65, 422),
        ("/ecgs/2147483647", 404),
        ("/ecgs/\u00b2", 404),
    ],
)
def test_web_page_bounds(ro_client, path, status):
    login(ro_client)
    r = ro_client.get(path)
    assert r.status_code == status, r.text
    if status == 422:
        assert r.headers["content-type"].startswith("text/html") and "Bad request" in r.text


@pytest.mark.parametrize(
    "ecg_id, message_id",
    [
        ("0", "1"),
        (str(2**31), "1"),
        (str(2**63), "1"),
        ("1", "0"),
        ("1", str(2**31)),
        ("1", str(2**63)),
        ("1", "x"),
    ],
)
def test_web_resend_bounds(client, seeded, session_factory, ecg_id, message_id):
    login(client)
    r = client.post(
        f"/ecgs/{ecg_id}/resend",
        data={"message_id": message_id, "csrf_token": session_csrf(client)},
        follow_redirects=False,
    )
    assert r.status_code == 422 and "Bad request" in r.text
    assert [a.action for a in audit_rows(session_factory)] == ["login"]


# --- security headers on every response -----------------------------------------------------------


def _assert_security_headers(r, where):
    from gateway.admin.app import CONTENT_SECURITY_POLICY

    h = r.headers
    assert h["content-security-policy"] == CONTENT_SECURITY_POLICY, where
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY and "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert h["x-content-type-options"] == "nosniff" and h["referrer-policy"] == "no-referrer", where
    assert h["x-frame-options"] == "DENY", where


def test_every_response_carries_the_security_headers(ro_client, ro_ids):
    anonymous = [
        ("GET", "/"),
        ("GET", "/login"),
        ("GET", "/ecgs"),
        ("GET", "/static/style.css"),
        ("GET", "/api/ecgs"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/nowhere"),
        ("GET", "/docs"),
        ("POST", "/login"),
        ("POST", "/logout"),
        ("GET", "/api/ecgs/" + "1" * 65),
        ("PUT", "/api/ecgs"),
    ]
    for method, path in anonymous:
        _assert_security_headers(ro_client.request(method, path, follow_redirects=False), (method, path))
    login(ro_client)
    for path in ["/ecgs", f"/ecgs/{ro_ids['e1']}", f"/ecgs/{ro_ids['e3']}", "/ecgs/404040", "/ecgs?page=0"]:
        r = ro_client.get(path)
        _assert_security_headers(r, path)
        assert r.headers["cache-control"] == "no-store"
    for path in ["/api/ecgs", f"/api/ecgs/{ro_ids['e1']}", f"/api/ecgs/{ro_ids['e1']}/input.npy"]:
        r = ro_client.get(path, headers=AUTH)
        _assert_security_headers(r, path)
        assert r.headers["cache-control"] == "no-store"
    assert "no-store" not in ro_client.get("/static/style.css").headers.get("cache-control", "")


def test_even_an_unexpected_error_carries_the_security_headers(tmp_path):
    def broken_session():
        raise RuntimeError("database on fire")

    c = TestClient(create_app(make_cfg("sqlite:///unused.db", tmp_path), broken_session), raise_server_exceptions=False)
    r = c.get("/api/ecgs", headers=AUTH)
    assert r.status_code == 500 and "database on fire" not in r.text
    _assert_security_headers(r, "500")


def test_pages_load_nothing_from_elsewhere_and_run_no_script(ro_client, ro_ids):
    from pathlib import Path

    import gateway.admin.web as web

    for template in Path(web.HERE / "templates").glob("*.html"):
        text = template.read_text()
        assert "<script" not in text and "style=" not in text and "://" not in text, template.name
    login(ro_client)
    for path in ["/login", "/ecgs", f"/ecgs/{ro_ids['e1']}", f"/ecgs/{ro_ids['e2']}", f"/ecgs/{ro_ids['e3']}"]:
        page = ro_client.get(path).text
        assert "<script" not in page and " style=" not in page and 'src="http' not in page, path
        assert 'href="http' not in page, path


def test_ecg_page_title_is_short(ro_client, ro_ids):
    """The whole normalisation report (thousands of characters) used to land in <title>."""
    import re

    login(ro_client)
    for key, status in (("e1", "processed"), ("e3", "rejected"), ("e4", "failed")):
        page = ro_client.get(f"/ecgs/{ro_ids[key]}").text
        (title,) = re.findall(r"<title>(.*?)</title>", page, re.S)
        assert title == f"ECG {ro_ids[key]} - {status} - ECG gateway"
        assert page.count("Normalisation report") == (0 if key == "e4" else 1)  # the report: once, in <main>
    page = ro_client.get(f"/ecgs/{ro_ids['e1']}").text
    assert page.index("</title>") < page.index("<main>") < page.index("Full report") < page.index("output_leads")
