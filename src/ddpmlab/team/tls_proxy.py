"""The TLS front of a team stack's S3 on an address other machines reach: it accepts TLS on
--listen and passes the bytes, decrypted and unchanged, to the object store's own S3 on
loopback (--to). Unchanged matters: S3 signatures cover the Host header, which the client set
to the public address. SeaweedFS's own gateway (`weed s3`) could serve TLS, but it also opens
an unauthenticated gRPC port on whatever address it binds; this opens nothing else.

    python -m ddpmlab.team.tls_proxy --listen HOST:PORT --to 127.0.0.1:PORT --cert C --key K

Runs until SIGTERM. Imports nothing of ddpmlab, so any Python that runs MLflow's server runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl

CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the EOF on (a half-close where the transport has one)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError, ssl.SSLError):
        writer.close()


async def _relay(target: tuple[str, int], client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.close()
        return
    try:
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
    finally:
        for writer in (upstream_writer, client_writer):
            writer.close()


async def serve(listen: tuple[str, int], target: tuple[str, int], context: ssl.SSLContext) -> None:
    server = await asyncio.start_server(lambda r, w: _relay(target, r, w), *listen, ssl=context, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=address, required=True, help="HOST:PORT to accept TLS on")
    parser.add_argument("--to", type=address, required=True, help="HOST:PORT of the plain-HTTP server behind")
    parser.add_argument("--cert", required=True, help="certificate (PEM, with its chain)")
    parser.add_argument("--key", required=True, help="its private key (PEM)")
    args = parser.parse_args(argv)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    asyncio.run(serve(args.listen, args.to, context))


if __name__ == "__main__":
    main()
