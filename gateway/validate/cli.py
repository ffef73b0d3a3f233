"""``ecg-gateway validate``: commissioning on the paper's published test set.

Imports nothing heavy at module level; TensorFlow is loaded by the command.
Exit codes: 0 passed, 1 failed the pass criteria, 2 could not run
(bad options, missing or malformed test set, download or gateway problem).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.cliconfig import config_from

if TYPE_CHECKING:
    from rich.progress import TaskID


def validate(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="Folder holding ecg_tracings.hdf5 and gold_standard.csv [default: validate.data_dir]."
        ),
    ] = None,
    fetch: Annotated[
        bool,
        typer.Option("--fetch", help="Download data.zip (validate.url, md5 validate.md5) into the data folder first."),
    ] = False,
    roundtrip: Annotated[
        bool, typer.Option("--roundtrip/--no-roundtrip", help="Also send every tracing as DICOM through a gateway.")
    ] = True,
    target: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT[:AET] of a RUNNING gateway instead of starting one (needs --database-url). It will "
            "process, store and - unless its HL7 is off - send results for the test ECGs "
            "(patient id ECGGW-VALIDATION): use a test installation."
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="With --target: that gateway's database. Without: an EMPTY database for the gateway started "
            "for the run [default: SQLite under the run folder]."
        ),
    ] = None,
    rates: Annotated[
        str, typer.Option(help="Cart sampling rates, comma-separated: 400 = as stored, others resampled.")
    ] = "400,500",
    code_schemes: Annotated[str, typer.Option(help="Lead code schemes, comma-separated: SCPECG, MDC.")] = "SCPECG,MDC",
    resolution_uv: Annotated[
        float, typer.Option(min=0.01, max=100.0, help="Sample resolution of the DICOM objects in uV (16-bit samples).")
    ] = 1.0,
    limit: Annotated[int | None, typer.Option(min=1, help="Use only the first N tracings (a quick check).")] = None,
    flip_margin: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Pass criterion [default: validate.flip_margin].")
    ] = None,
    max_abs_difference: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Pass criterion, 0 = off [default: validate.max_abs_difference]."),
    ] = None,
    timeout: Annotated[float, typer.Option(min=1.0, help="Seconds to wait for the gateway's results.")] = 900.0,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON instead of the text report.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars (on stderr).")] = True,
) -> None:
    """Commission this installation: the published model's answers on the paper's test set, directly and
    through the full DICOM path.

    Runs the configured model(s) on the 827 test tracings and prints precision, recall, specificity and F1
    per finding beside the paper's Table 2; then writes every tracing as a cart-like 12-lead ECG DICOM
    object, sends it by C-STORE to a gateway and compares the probabilities the gateway stored with the
    direct ones. Reports (text, HTML, JSON) go to validate.report_dir/<timestamp>/.
    """
    import json
    import sys

    from rich.console import Console

    from gateway.logs import setup_logging
    from gateway.validate.dataset import DatasetError, fetch_test_set
    from gateway.validate.roundtrip import RoundTripError, parse_target, parse_variants
    from gateway.validate.run import ValidateOptions, run_validation

    cfg = config_from(ctx)
    setup_logging(cfg.logging.level)
    err = Console(stderr=True)

    def fail(message: str) -> typer.Exit:
        typer.echo(f"validate: {message}", err=True)
        return typer.Exit(2)

    try:
        variants = parse_variants(rates, code_schemes)
        parsed_target = parse_target(target, cfg.dicom.ae_title) if target else None
    except ValueError as exc:
        raise fail(str(exc)) from None
    if parsed_target and not database_url:
        raise fail("--target needs --database-url (the running gateway's database) to read its results")
    if parsed_target and not roundtrip:
        raise fail("--target makes no sense with --no-roundtrip")

    data_dir = data or Path(cfg.validation.data_dir)
    notes: list[str] = []
    if fetch:
        if not cfg.validation.md5:
            err.print(
                "[bold red]WARNING: validate.md5 is empty: the downloaded data.zip will NOT be verified. "
                "Copy the md5 from the Zenodo record page (10.5281/zenodo.3765780) into validate.md5.[/]"
            )
        try:
            fetched = fetch_test_set(cfg.validation.url, cfg.validation.md5, data_dir, progress=progress, console=err)
        except DatasetError as exc:
            raise fail(f"--fetch: {exc}") from None
        if fetched.verified:
            notes.append(f"data.zip downloaded from {cfg.validation.url}, md5 {fetched.md5} verified.")
        else:
            notes.append(
                f"WARNING: data.zip downloaded from {cfg.validation.url} was NOT verified (validate.md5 "
                f"empty): its md5 is {fetched.md5}, sha256 {fetched.sha256}; compare with the Zenodo record."
            )
            err.print(f"[bold red]data.zip NOT verified[/]: md5 {fetched.md5}, sha256 {fetched.sha256}")

    opts = ValidateOptions(
        data_dir=data_dir,
        report_dir=Path(cfg.validation.report_dir),
        roundtrip=roundtrip,
        limit=limit,
        variants=variants,
        resolution_uv=resolution_uv,
        target=parsed_target,
        database_url=database_url,
        flip_margin=cfg.validation.flip_margin if flip_margin is None else flip_margin,
        max_abs_difference=cfg.validation.max_abs_difference if max_abs_difference is None else max_abs_difference,
        timeout_s=timeout,
        config_path=str(ctx.find_root().obj.get("config_path") or "") or None,
        notes=notes,
    )

    bars: dict[str, TaskID] = {}
    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err, transient=True)

    def report_progress(what: str, done: int, total: int) -> None:
        if bar is None:
            return
        if what not in bars:
            bars[what] = bar.add_task(what, total=total)
        bar.update(bars[what], completed=done)

    from gateway.infer.loader import ModelLoadError

    try:
        if bar is not None:
            bar.start()
        try:
            result, run_dir, paths = run_validation(cfg, opts, progress=report_progress)
        finally:
            if bar is not None:
                bar.stop()
    except (DatasetError, RoundTripError) as exc:
        raise fail(str(exc)) from None
    except (ModelLoadError, FileNotFoundError) as exc:
        raise fail(f"cannot load the model: {exc}") from None

    if json_out:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    else:
        typer.echo(paths["text"].read_text(encoding="utf-8"), nl=False)
        typer.echo(f"\nReports: {paths['text']}, {paths['html']}, {paths['json']}")
    raise typer.Exit(0 if result["passed"] else 1)
