from pathlib import Path

import pytest

from gateway.config import PAPER_THRESHOLDS, Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "g.toml"
    p.write_text(text)
    return p


def test_example_file_equals_documented_defaults():
    assert load_config(ROOT / "config/gateway.toml", environ={}) == Config()


def test_required_defaults():
    c = Config()
    assert (c.dicom.ae_title, c.dicom.port, c.dicom.allowed_calling_aets) == ("ECGGW", 11112, [])
    assert (c.admin.host, c.admin.port) == ("127.0.0.1", 8080)
    assert c.storage.database_url.startswith("sqlite:///var/")
    assert c.storage.spool_dir.startswith("var/")
    assert c.model.thresholds == PAPER_THRESHOLDS


def test_env_overrides_each_type(tmp_path):
    env = {
        "ECG_GATEWAY_DICOM__PORT": "11113",
        "ECG_GATEWAY_DICOM__ALLOWED_CALLING_AETS": '["CART1", "CART2"]',
        "ECG_GATEWAY_HL7__ENABLED": "false",
        "ECG_GATEWAY_ADMIN__TOKEN": "s3cret-token",
        "ECG_GATEWAY_MODEL__FILES": '["a.hdf5", "b.hdf5"]',
    }
    c = load_config(write(tmp_path, "[dicom]\nport = 104\n"), environ=env)
    assert c.dicom.port == 11113
    assert c.dicom.allowed_calling_aets == ["CART1", "CART2"]
    assert c.hl7.enabled is False
    assert c.admin.token == "s3cret-token"
    assert c.model.files == ["a.hdf5", "b.hdf5"]


def test_config_env_variable_selects_file(tmp_path):
    p = write(tmp_path, '[dicom]\nae_title = "OTHER"\n')
    assert load_config(None, environ={"ECG_GATEWAY_CONFIG": str(p)}).dicom.ae_title == "OTHER"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[dicom]\nport = 70000\n", "dicom.port: Input should be less than or equal to 65535"),
        ("[dicom]\nprot = 104\n", "dicom.prot: unknown key"),
        ("[dicomm]\n", "dicomm: unknown key"),
        ('[dicom]\nport = "many"\n', "dicom.port: Input should be a valid integer"),
        ('[dicom]\nae_title = "THIS_TITLE_IS_TOO_LONG"\n', "dicom.ae_title: String should have at most 16 characters"),
        (
            '[dicom]\ntls_port = 2762\ntls_cert = "/nonexistent.pem"\ntls_key = "/nonexistent.key"\n',
            "dicom.tls_cert: tls_cert file not found: /nonexistent.pem",
        ),
        ("[dicom]\ntls_port = 2762\n", "dicom: tls_port needs tls_cert and tls_key"),
        (
            '[dicom]\nallowed_hosts = ["10.0.0.0/33"]\n',
            "dicom.allowed_hosts: not an IP address or network: '10.0.0.0/33'",
        ),
        ('[storage]\ndatabase_url = "mysql://x/y"\n', "storage.database_url: only sqlite and postgresql"),
        ("[model]\nfiles = []\n", "model.files: at least one model file is needed"),
        ("[model.thresholds]\nAF = 1.5\n", "model.thresholds.AF: Input should be less than 1"),
        (
            '[normalise]\nlimb_lead_order = ["I", "I", "III", "aVR", "aVL", "aVF"]\n',
            "normalise.limb_lead_order: must list",
        ),
        ("[model.thresholds]\nAFIB = 0.3\n", "model.thresholds: unknown finding 'AFIB'"),
        ("[dicom\n", "not valid TOML"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text), environ={})
    msg = str(exc.value)
    assert expected in msg
    assert "\n" not in msg


def test_bad_env_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match=r"environment \(ECG_GATEWAY_ADMIN__PORT\): admin.port"):
        load_config(write(tmp_path, ""), environ={"ECG_GATEWAY_ADMIN__PORT": "0"})


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_partial_thresholds_keep_paper_values(tmp_path):
    c = load_config(write(tmp_path, "[model.thresholds]\nAF = 0.5\n"), environ={})
    assert c.model.thresholds == {**PAPER_THRESHOLDS, "AF": 0.5}


def test_env_text_keys_stay_text(tmp_path):
    env = {
        "ECG_GATEWAY_DICOM__AE_TITLE": "104",
        "ECG_GATEWAY_ADMIN__TOKEN": "12345678901234567890",
        "ECG_GATEWAY_VALIDATE__MD5": "12345678901234567890123456789012",
    }
    c = load_config(write(tmp_path, ""), environ=env)
    assert c.dicom.ae_title == "104"
    assert c.admin.token == "12345678901234567890"
    assert c.validation.md5 == "12345678901234567890123456789012"


def test_unknown_env_variables_are_warned_with_the_likely_name():
    from gateway.config import env_warnings

    warnings = env_warnings(
        {
            "ECG_GATEWAY_DICOM_PORT": "11113",  # one underscore
            "ECG_GATEWAY_ADMIN_TOKEN": "x",
            "ECG_GATEWAY_CONFG": "f.toml",
            "ECG_GATEWAY_NONSENSE": "1",
            # not warned: settings, the config file, the test suite's own variables, other programs'
            "ECG_GATEWAY_DICOM__PORT": "11113",
            "ECG_GATEWAY_CONFIG": "f.toml",
            "ECG_GATEWAY_TEST_DATABASE_URL": "postgresql://",
            "ECG_GATEWAY_FUZZ_EXAMPLES": "10",
            "PATH": "/bin",
        }
    )
    assert warnings == [
        "warning: environment variable ECG_GATEWAY_ADMIN_TOKEN is not a setting and is ignored; "
        "did you mean ECG_GATEWAY_ADMIN__TOKEN?",
        "warning: environment variable ECG_GATEWAY_CONFG is not a setting and is ignored; "
        "did you mean ECG_GATEWAY_CONFIG?",
        "warning: environment variable ECG_GATEWAY_DICOM_PORT is not a setting and is ignored; "
        "did you mean ECG_GATEWAY_DICOM__PORT?",
        "warning: environment variable ECG_GATEWAY_NONSENSE is not a setting and is ignored; "
        "settings are ECG_GATEWAY_<SECTION>__<KEY> (two underscores)",
    ]


def test_every_setting_has_a_variable_that_load_config_accepts():
    from gateway.config import Config, env_warnings, load_config, setting_variables

    names = setting_variables()
    assert "ECG_GATEWAY_DICOM__PORT" in names and "ECG_GATEWAY_VALIDATE__URL" in names
    assert env_warnings({n: "" for n in names}) == []
    assert load_config(None, {"ECG_GATEWAY_DICOM__PORT": "11113"}).dicom.port == 11113
    assert len(names) == sum(len(f.annotation.model_fields) for f in Config.model_fields.values())


def test_cli_prints_the_warning(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("ECG_GATEWAY_")}
    env.update({"ECG_GATEWAY_DICOM_PORT": "11113", "ECG_GATEWAY_STORAGE__DATABASE_URL": f"sqlite:///{tmp_path}/g.db"})
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "db", "current"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "warning: environment variable ECG_GATEWAY_DICOM_PORT is not a setting and is "
        "ignored; did you mean ECG_GATEWAY_DICOM__PORT?"
    ]
