"""An SMTP sink for the embedded stack: every received message becomes its own ``.eml`` file.

``python -m stack.smtp_sink --port 1025 --dir .stack/data/smtp``. It never deduplicates: a
consumer that sends the same email twice leaves two files, which is exactly what the tests need to
see. Each file is written under a temporary name and renamed, so a reader globbing ``*.eml`` never
sees half a message. The envelope sender and recipients are prepended as ``X-Envelope-From`` /
``X-Envelope-To`` headers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger("stack.smtp_sink")


class EmlDirectoryHandler:
    """aiosmtpd handler writing each DATA payload as ``<ns timestamp>-<uuid>.eml``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        recipients = ", ".join(envelope.rcpt_tos)
        prefix = (
            f"X-Envelope-From: {envelope.mail_from}\r\nX-Envelope-To: {recipients}\r\n"
        ).encode()
        name = f"{time.time_ns()}-{uuid.uuid4().hex}"
        await asyncio.to_thread(self._write, name, prefix + content)
        log.info("stored %s.eml from %s to %s", name, envelope.mail_from, recipients)
        return "250 Message accepted for delivery"

    def _write(self, name: str, data: bytes) -> None:
        tmp = self.directory / f".{name}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / f"{name}.eml")


async def serve(host: str, port: int, directory: Path) -> None:
    loop = asyncio.get_running_loop()
    handler = EmlDirectoryHandler(directory)

    def factory() -> Any:
        return SMTP(handler, hostname="smtp-sink.local", loop=loop)

    server = await loop.create_server(factory, host=host, port=port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("smtp sink listening on %s:%d, writing to %s", host, port, directory)
    await stop.wait()
    server.close()
    await server.wait_closed()
    log.info("smtp sink stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stack.smtp_sink", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--dir", type=Path, required=True, help="where .eml files are written")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(serve(args.host, args.port, args.dir))


if __name__ == "__main__":
    main()
