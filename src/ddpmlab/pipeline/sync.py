"""`ddpmlab tracking status` and `ddpmlab tracking sync`: what the journal still holds for the
tracking server, and sending it (after an outage that outlasted a stage's wait)."""

from __future__ import annotations

import click


@click.group("tracking")
def tracking_group() -> None:
    """Records that stages logged while the MLflow server was down or failing.

    For a tracking server (MLFLOW_TRACKING_URI=http...), every stage journals what it logs in
    .ddpmlab/journal/ and sends it from a background thread; what a stage could not send by its
    end stays there and goes with the next stage, or with `ddpmlab tracking sync`."""


@tracking_group.command("status")
def status() -> None:
    """Records not yet on the server, per journal (one journal per stage run), and the records
    the server refused, set aside with its answer."""
    from ddpmlab.pipeline import tracking
    from ddpmlab.pipeline.journal import journals, set_aside_records

    uri, folder = tracking.tracking_uri(), tracking.journal_folder()
    if not tracking.is_server(uri):
        click.echo(f"{uri} is a local store: records go straight in, nothing is journaled")
        return
    found = list(journals(folder, uri))
    for journal in found:
        click.echo(f"{journal.path.name}: {journal.unsent_count()} record(s) not sent")
    click.echo(f"{len(found)} journal(s) for {uri} in {folder}")
    for path, records in set_aside_records(folder, uri).items():
        click.echo(f"{path.name}: {len(records)} record(s) refused by the server and set aside:")
        for record in records[:5]:
            click.echo(f"  {record['op']} (run {record.get('run')}): {record['error'][:200]}")
        if len(records) > 5:
            click.echo(f"  ... and {len(records) - 5} more")
    if set_aside_records(folder, uri):
        click.echo("Once the cause is fixed: ddpmlab tracking sync --retry-rejected")


@tracking_group.command("sync")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=300, show_default=True,
              help="Seconds to keep retrying a server that does not answer or answers with errors.")  # fmt: skip
@click.option("--retry-rejected", is_flag=True,
              help="Also send again the records the server refused (set aside, see `ddpmlab tracking status`), once fixed.")
def sync(wait_s: float, retry_rejected: bool) -> None:
    """Send every journaled record to MLFLOW_TRACKING_URI, oldest first, with the original
    timestamps and steps. Exits non-zero if some are still not on the server after --wait, or
    the server refused some (they are set aside again)."""
    from ddpmlab.pipeline import tracking

    uri = tracking.tracking_uri()
    if not tracking.is_server(uri):
        raise click.ClickException(f"MLFLOW_TRACKING_URI is {uri}, a local store: there is nothing to sync")
    box = tracking.outbox_for_sync()
    box.rejected = []  # what an earlier call in this process set aside is on disk; this call reports its own
    retried = box.retry_rejected() if retry_rejected else 0
    before = box.pending()
    if box.drain(wait_s) and not box.rejected:
        box.close()
        again = f" ({retried} of them set aside before)" if retried else ""
        click.echo(f"sent {before} record(s) to {uri}{again}; the journal is empty")
        return
    if box.rejected:
        raise click.ClickException(f"{uri} refused {len(box.rejected)} record(s), set aside again: {box.rejected[0]}")
    raise click.ClickException(f"{box.pending()} record(s) still not on {uri} after {wait_s:.0f} s ({str(box.last_error)[:300]}); they stay in {box.folder}")
