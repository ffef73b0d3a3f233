"""``ecg-gateway demo``: try the pipeline end to end on this machine."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="Try the pipeline: send sample ECGs to a running gateway.", no_args_is_help=True)


@app.command()
def send(
    ctx: typer.Context,
    count: Annotated[int, typer.Option(min=1, max=10000, help="How many copies (each with new UIDs).")] = 1,
    host: Annotated[str, typer.Option(help="SCP host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="SCP port [default: [dicom] port].")] = 0,
    calling_ae: Annotated[str, typer.Option(help="Our AE title.")] = "DEMOCART",
) -> None:
    """Send pydicom's sample 12-lead ECG (a real Mortara recording) with new UIDs to the SCP.

    Prints the C-STORE status of each copy; exits 1 if any was not 0x0000.
    """
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid
    from pynetdicom import AE

    from gateway.cli import config_from

    cfg = config_from(ctx)
    ds = dcmread(get_testdata_file("waveform_ecg.dcm"))
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, port or cfg.dicom.port, ae_title=cfg.dicom.ae_title)
    if not assoc.is_established:
        typer.echo(f"association with {host}:{port or cfg.dicom.port} ({cfg.dicom.ae_title}) was not established",
                   err=True)
        raise typer.Exit(1)
    failed = 0
    try:
        for _ in range(count):
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            failed += code != 0
            typer.echo(f"{ds.SOPInstanceUID}: " + (f"0x{code:04X}" if code is not None else "no response"))
    finally:
        assoc.release()
    raise typer.Exit(1 if failed else 0)
