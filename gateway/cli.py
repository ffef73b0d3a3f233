"""The ``ecg-gateway`` command line.

Each stage owns its sub-commands (``gateway/<stage>/cli.py``); this module
only wires them together.  Those modules import nothing heavy at import time:
TensorFlow is loaded only by commands that run the model, so ``--help``,
``results``, ``hl7`` and ``db`` answer in about a second.
"""

from __future__ import annotations

import copy
import gc
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from gateway import __version__
from gateway.admin.cli import audit_app, ecg_app, results_app, users_app
from gateway.cliconfig import config_from
from gateway.config import Config
from gateway.deliver.cli import app as hl7_app
from gateway.deliver.cli import pacs_app
from gateway.demo import app as demo_app
from gateway.infer.cli import app as model_app
from gateway.receive.cli import ingest
from gateway.store.cli import app as db_app
from gateway.validate.cli import validate


def _config_after_command(ctx: Any, _param: Any, value: Path | None) -> None:
    """``--config`` given after a sub-command (``serve --config F``): the
    root's callback has run by then, so this one wins."""
    if value is not None:
        root = ctx.find_root()
        if root.obj is None:
            root.obj = {}
        root.obj["config_path"] = value


def _give_config_option(command: Any, template: Any) -> None:
    """Add a copy of the root's ``--config`` option to ``command`` and every
    command below it, so it is accepted wherever people type it."""
    taken = {opt for p in command.params for opt in getattr(p, "opts", [])}
    if "--config" not in taken:
        option = copy.copy(template)
        option.opts = [o for o in template.opts if o not in taken]
        option.secondary_opts = []
        option.expose_value = False
        option.callback = _config_after_command
        command.params.append(option)
    for sub in getattr(command, "commands", {}).values():
        _give_config_option(sub, template)


class _ConfigEverywhere(TyperGroup):
    """The root group: ``--config`` before or after any sub-command."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        template = next(p for p in self.params if p.name == "config")
        for command in self.commands.values():
            _give_config_option(command, template)


app = typer.Typer(
    name="ecg-gateway",
    cls=_ConfigEverywhere,
    help="DICOM ECG in, AI reading (Ribeiro et al. 2020) out as HL7 ORU^R01 over MLLP.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ecg-gateway {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="TOML configuration file (also accepted after the command; env ECG_GATEWAY_CONFIG; "
            "default config/gateway.toml)",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Every key of the configuration can be overridden with ECG_GATEWAY_<SECTION>__<KEY>."""
    ctx.obj = {"config_path": config}


@app.command()
def serve(
    ctx: typer.Context,
    components: Annotated[
        str,
        typer.Option(
            help="Comma-separated parts to run: scp, watch, worker, hl7, pacs, admin (watch: only with "
            "[ingest] watch_dir set; pacs: only with [pacs] "
            "enabled). Extra machines behind one PostgreSQL database and a shared spool run e.g. "
            "'worker,hl7'."
        ),
    ] = "scp,watch,worker,hl7,pacs,admin",
    fetch_model: Annotated[
        bool,
        typer.Option(
            "--fetch-model",
            help="When the configured model files are missing and are the published "
            "ones, download them first (what ./dev serve does).",
        ),
    ] = False,
) -> None:
    """Run the gateway: DICOM SCP, worker, HL7 sender and admin web in one process.

    Binds its ports first (a port in use: one line naming it, exit 1, nothing written), then applies
    database migrations. Logs the admin URL. Stops cleanly on SIGTERM or SIGINT.
    """
    from gateway.serve import parse_components, run

    cfg = config_from(ctx)
    try:
        parts = parse_components(components)
    except ValueError as exc:
        typer.echo(f"--components: {exc}", err=True)
        raise typer.Exit(2) from None
    if fetch_model and "worker" in parts:
        _fetch_missing_model(cfg)
    code = run(cfg, parts)
    # Stopped (engine disposed, logs flushed at exit). The interpreter's last garbage collection
    # would walk every object TensorFlow left: serve's SIGTERM stop took 9.7 s instead of 1.1 s
    # (2 cores under load). Frozen objects are skipped by it; the process's end frees them.
    gc.freeze()
    raise typer.Exit(code)


def _fetch_missing_model(cfg: Config) -> None:
    """``serve --fetch-model``: install the published model when it is what
    is missing; one line and exit 1 when it cannot be fetched.  A missing
    file the archive does not provide is left to ``serve``'s own refusal."""
    from rich.console import Console

    from gateway.infer.fetch import WAYS_ON, FetchError, fetch_model, fetch_plan
    from gateway.serve import missing_model_files

    missing = missing_model_files(cfg)
    seeds = fetch_plan(missing, cfg.model.dir) if missing else None
    if seeds is None:
        return
    try:  # the progress bar appears once bytes flow: offline, the one line below is all
        files = fetch_model(
            cfg.model.url,
            cfg.model.md5,
            cfg.model.dir,
            include_seeds=seeds,
            progress=True,
            console=Console(stderr=True),
        )
    except FetchError as exc:
        text = str(exc)
        typer.echo(
            f"no model file, and fetching it failed: {text}" + ("" if WAYS_ON in text else f"; {WAYS_ON}"), err=True
        )
        raise typer.Exit(1) from None
    for f in files:
        typer.echo(f"installed {f} (md5-checked archive from {cfg.model.url})", err=True)


app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
app.command("ingest")(ingest)
app.add_typer(results_app, name="results")
app.add_typer(ecg_app, name="ecg")
app.add_typer(users_app, name="users")
app.add_typer(audit_app, name="audit")
app.add_typer(hl7_app, name="hl7")
app.add_typer(pacs_app, name="pacs")
app.add_typer(demo_app, name="demo")
app.command("validate")(validate)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
