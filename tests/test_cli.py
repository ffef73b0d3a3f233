"""The command line: help everywhere, clear config errors, no TensorFlow for admin commands."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command

from gateway.cli import app

ROOT = Path(__file__).resolve().parents[1]


def all_command_paths():
    def walk(cmd, path):
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, path + [name])

    return list(walk(get_command(app), []))


def run_cli(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ECG_GATEWAY_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120
    )


def test_required_groups_exist():
    names = {tuple(p) for p in all_command_paths()}
    for required in [
        ("serve",),
        ("db", "upgrade"),
        ("model",),
        ("ingest",),
        ("results",),
        ("ecg",),
        ("hl7",),
        ("demo",),
        ("users", "add"),
        ("users", "list"),
        ("users", "disable"),
        ("users", "passwd"),
        ("users", "token"),
        ("audit", "list"),
    ]:
        assert required in names, required


@pytest.mark.parametrize("path", all_command_paths(), ids=lambda p: " ".join(p) or "root")
def test_help_everywhere(path):
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_bad_config_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[dicom]\nport = 70000\n")
    r = run_cli("--config", str(bad), "db", "upgrade")
    assert r.returncode == 2
    assert r.stderr.strip() == f"config error in {bad}: dicom.port: Input should be less than or equal to 65535"
    assert "Traceback" not in r.stderr


def test_serve_without_model_says_how_to_fetch(tmp_path):
    r = run_cli(
        "serve",
        env={
            "ECG_GATEWAY_MODEL__FILES": f'["{tmp_path}/none.hdf5"]',
            "ECG_GATEWAY_STORAGE__DATABASE_URL": f"sqlite:///{tmp_path}/g.db",
        },
    )
    assert r.returncode == 2
    assert r.stderr.startswith("no model file: run `ecg-gateway model fetch`")
    assert len(r.stderr.strip().splitlines()) == 1


def test_db_upgrade_from_cli(tmp_path):
    r = run_cli("db", "upgrade", env={"ECG_GATEWAY_STORAGE__DATABASE_URL": f"sqlite:///{tmp_path}/g.db"})
    assert r.returncode == 0, r.stderr
    assert "database at revision" in r.stdout


#: Commands that must not import TensorFlow/Keras (an admin's shell stays fast).
ADMIN_COMMANDS = [
    ["--help"],
    ["results", "--help"],
    ["hl7", "--help"],
    ["db", "--help"],
    ["db", "current"],
    ["users", "--help"],
    ["audit", "--help"],
]


def test_admin_commands_do_not_import_tensorflow(tmp_path):
    # One interpreter runs them in turn (a new one each cost ~0.7 s of CPU); after each command it
    # prints what heavy modules are loaded, so the first command that pulls one in is named.
    code = (
        "import json, runpy, sys\n"
        f"for args in json.loads({json.dumps(json.dumps(ADMIN_COMMANDS))}):\n"
        "    sys.argv = ['ecg-gateway', *args]\n"
        "    try:\n        runpy.run_module('gateway', run_name='__main__')\n"
        "    except SystemExit:\n        pass\n"
        "    bad = [m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules]\n"
        "    print('HEAVY after ' + ' '.join(args) + ': ' + ','.join(bad))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECG_GATEWAY_")}
    env["ECG_GATEWAY_STORAGE__DATABASE_URL"] = f"sqlite:///{tmp_path}/g.db"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    checks = [line for line in r.stdout.splitlines() if line.startswith("HEAVY after ")]
    assert checks == [f"HEAVY after {' '.join(args)}: " for args in ADMIN_COMMANDS], r.stdout[-2000:] + r.stderr


def _leaf_paths() -> list[list[str]]:
    root = get_command(app)

    def walk(cmd, path):  # type: ignore[no-untyped-def]
        subs = getattr(cmd, "commands", {})
        if not subs:
            yield path
        for name, sub in subs.items():
            yield from walk(sub, path + [name])

    return list(walk(root, []))


@pytest.mark.parametrize("path", _leaf_paths(), ids=lambda p: " ".join(p))
def test_config_is_accepted_after_every_command(path, tmp_path):
    """`ecg-gateway <command> --config F` parses (click rejects an unknown
    option before --help is acted on), on every command of the tree."""
    from typer.testing import CliRunner

    cfg = tmp_path / "gateway.toml"
    cfg.write_text("")
    for placement in (
        [*path, "--config", str(cfg), "--help"],
        [*path, "-c", str(cfg), "--help"],
        [*path[:1], "--config", str(cfg), *path[1:], "--help"],
    ):
        result = CliRunner().invoke(app, placement)
        assert result.exit_code == 0, (placement, result.output)
        assert "Usage:" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--config", "{f}"],
        ["db", "upgrade", "--config", "{f}"],
        ["db", "--config", "{f}", "current"],
        ["--config", "{f}", "results", "list"],
        ["results", "list", "-c", "{f}"],
    ],
)
def test_config_after_the_command_is_the_file_read(args, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[dicom]\nport = 70000\n")
    r = run_cli(*[a.format(f=bad) for a in args])
    assert r.returncode == 2
    assert r.stderr.strip() == f"config error in {bad}: dicom.port: Input should be less than or equal to 65535"


def test_config_after_the_command_wins_over_the_one_before(tmp_path):
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(f'[storage]\ndatabase_url = "sqlite:///{tmp_path}/from-good.db"\n')
    bad.write_text("[dicom]\nport = 70000\n")
    r = run_cli("--config", str(bad), "db", "upgrade", "--config", str(good))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "from-good.db").is_file()
