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
    """Records not yet on the server, per journal (one journal per stage run)."""
    from ddpmlab.pipeline import tracking
    from ddpmlab.pipeline.journal import journals

    uri, folder = tracking.tracking_uri(), tracking.journal_folder()
    if not tracking.is_server(uri):
        click.echo(f"{uri} is a local store: records go straight in, nothing is journaled")
        return
    found = list(journals(folder, uri))
    for journal in found:
        rejected = journal.path.with_suffix(".rejected")
        note = f", {len(rejected.read_text().splitlines())} refused by the server ({rejected.name})" if rejected.exists() else ""
        click.echo(f"{journal.path.name}: {len(journal.unsent())} record(s) not sent{note}")
    click.echo(f"{len(found)} journal(s) for {uri} in {folder}")


@tracking_group.command("sync")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=300, show_default=True,
              help="Seconds to keep retrying a server that does not answer or answers with errors.")  # fmt: skip
def sync(wait_s: float) -> None:
    """Send every journaled record to MLFLOW_TRACKING_URI, oldest first, with the original
    timestamps and steps. Exits non-zero if some are still not on the server after --wait."""
    from ddpmlab.pipeline import tracking

    uri = tracking.tracking_uri()
    if not tracking.is_server(uri):
        raise click.ClickException(f"MLFLOW_TRACKING_URI is {uri}, a local store: there is nothing to sync")
    box = tracking.outbox_for_sync()
    before = box.pending()
    if box.drain(wait_s) and not box.rejected:
        click.echo(f"sent {before} record(s) to {uri}; the journal is empty")
        return
    reason = box.rejected[0] if box.rejected else box.last_error
    raise click.ClickException(f"{box.pending()} record(s) still not on {uri} after {wait_s:.0f} s ({str(reason)[:300]}); they stay in {box.folder}")
