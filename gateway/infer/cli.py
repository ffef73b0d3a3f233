"""``ecg-gateway model``: fetch, list, verify and demo model files.

Only ``model demo`` imports TensorFlow (inside the command); fetch, list and
verify use the standard library, h5py and rich.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cliconfig import config_from

app = typer.Typer(
    help="Model files: fetch the published weights, list, verify, or write a demo model.", no_args_is_help=True
)


@app.command()
def fetch(
    ctx: typer.Context,
    all_seeds: Annotated[
        bool, typer.Option("--all", help="Also extract the ten other_seeds/model_N.hdf5 files.")
    ] = False,
    url: Annotated[str | None, typer.Option(help="Archive URL [default: model.url].")] = None,
    md5: Annotated[str | None, typer.Option(help="Archive md5 [default: model.md5].")] = None,
    directory: Annotated[Path | None, typer.Option("--dir", help="Extract here [default: model.dir].")] = None,
    keep_archive: Annotated[bool, typer.Option(help="Keep model.zip after extracting.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Download the published model (Zenodo record 3765717 by default), check its md5, extract into models/."""
    from rich.console import Console

    from gateway.infer.fetch import FetchError, fetch_model
    from gateway.logs import setup_logging

    cfg = config_from(ctx)
    setup_logging(cfg.logging.level)
    try:
        files = fetch_model(
            url or cfg.model.url,
            md5 or cfg.model.md5,
            directory or Path(cfg.model.dir),
            include_seeds=all_seeds,
            progress=progress,
            keep_archive=keep_archive,
            console=Console(stderr=True),
        )
    except FetchError as exc:
        typer.echo(f"model fetch: {exc}", err=True)
        raise typer.Exit(1) from None
    for f in files:
        typer.echo(f"installed {f}")


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """Show the installed model files with sha256, size and whether they match the manifest."""
    from rich.console import Console
    from rich.table import Table

    from gateway.infer.demo import DEMO_LABEL
    from gateway.infer.manifest import survey

    cfg = config_from(ctx)
    try:
        files = survey(cfg.model.dir, list(cfg.model.files))
    except ValueError as exc:
        typer.echo(f"model list: {exc}", err=True)
        raise typer.Exit(1) from None
    configured = {Path(f).resolve() for f in cfg.model.files}
    table = Table("file", "size", "sha256", "status", "in use", "note")
    for f in files:
        table.add_row(
            str(f.path),
            "" if f.size is None else f"{f.size:,}",
            f.sha256 or "",
            f.status,
            "yes" if f.path in configured else "",
            DEMO_LABEL if f.demo else "",
        )
    Console(width=250).print(table)


@app.command()
def verify(ctx: typer.Context) -> None:
    """Re-hash the model files against the manifest; exit 1 on any difference or missing file."""
    from gateway.infer.manifest import survey

    cfg = config_from(ctx)
    try:
        files = survey(cfg.model.dir, list(cfg.model.files))
    except ValueError as exc:
        typer.echo(f"model verify: {exc}", err=True)
        raise typer.Exit(1) from None
    bad = 0
    for f in files:
        if f.status == "ok":
            typer.echo(f"ok       {f.path} sha256 {f.sha256}")
        elif f.status == "unrecorded":
            typer.echo(f"unknown  {f.path} sha256 {f.sha256} (not in the manifest)")
        else:
            bad += 1
            detail = (
                "file missing: run `ecg-gateway model fetch`"
                if f.status == "missing"
                else f"sha256 {f.sha256}, manifest says {f.recorded_sha256}"
            )
            typer.echo(f"{f.status.upper():8} {f.path} ({detail})", err=True)
    if not files:
        typer.echo(f"no model files in {cfg.model.dir} (run `ecg-gateway model fetch`)", err=True)
        raise typer.Exit(1)
    if bad:
        raise typer.Exit(1)


@app.command()
def demo(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Where to write the HDF5 file.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write an UNTRAINED model of the published architecture (seeded random weights) to try the pipeline.

    Every result, HL7 message (MSH-11 = D) and admin view produced with it says "untrained demo model".
    """
    from gateway.infer.demo import DEMO_LABEL, write_demo_model
    from gateway.infer.manifest import record_files

    cfg = config_from(ctx)
    path = write_demo_model(out, seed=seed)
    models_dir = Path(cfg.model.dir).resolve()
    if models_dir in path.resolve().parents:
        record_files(models_dir, [path], demo=True, seed=seed)
    typer.echo(f"wrote {path}: {DEMO_LABEL} (seed {seed}), NOT for clinical use")
    typer.echo(f"use it with: ECG_GATEWAY_MODEL__FILES='[\"{path}\"]' ecg-gateway serve")
