"""The configuration of one command-line run, for every sub-command.

A leaf below the commands: ``gateway.cli`` (the root command) and each stage's
own ``cli.py`` read the configuration here, so no stage imports the root
command that assembles it (that was an import cycle).
"""

from __future__ import annotations

import typer

from gateway.config import Config, ConfigError, env_warnings, load_config


def config_from(ctx: typer.Context) -> Config:
    """The validated configuration (loaded once per run, from the ``--config``
    the root command stored in ``ctx.find_root().obj``); a bad one ends the
    program with exit 2."""
    root = ctx.find_root()
    if root.obj is None:
        root.obj = {}
    if "config" not in root.obj:
        try:
            root.obj["config"] = load_config(root.obj.get("config_path"))
        except ConfigError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
        for warning in env_warnings():
            typer.echo(warning, err=True)
    config: Config = root.obj["config"]
    return config
