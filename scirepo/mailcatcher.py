"""The local SMTP server of `make up`: it accepts every mail and keeps it in a Maildir.

The local host's accounts service sends its mails here (site.example.yml points
accounts.smtp at `scirepo-mail:2525`, which the host container resolves to this machine's
Docker bridge address), so that a developer reads the welcome mail in
`.scirepo/mail/new/` and the tests read what was really delivered over SMTP. It is
aiosmtpd in a background process, like the local registry. A real site sets
accounts.smtp to its institute's mail server instead.
"""

from __future__ import annotations

import mailbox
import os
import signal
import socket
import subprocess
import sys
import time
from email import message_from_bytes
from pathlib import Path

from scirepo import daemon, progress, tls
from scirepo.config import ScirepoError

DIR = tls.TLS_DIR.parent / "mail"
PIDFILE = tls.TLS_DIR.parent / "mail.pid"
HOSTNAME = "scirepo-mail"
PORT = 2525


def _answers(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=2) as sock:
            return sock.recv(4).startswith(b"220")
    except OSError:
        return False


def ensure(gateway: str) -> None:
    """Start the catcher on gateway:PORT unless it answers there already."""
    if daemon.running(PIDFILE) and _answers(gateway, PORT):
        return
    stop()
    DIR.mkdir(parents=True, exist_ok=True)
    log = open(tls.TLS_DIR.parent / "mail.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "scirepo.mailcatcher", gateway, str(PORT), str(DIR)],
        stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    PIDFILE.write_text(str(proc.pid))

    def up() -> bool:
        if proc.poll() is not None:
            raise ScirepoError(f"the mail catcher on {gateway}:{PORT} exited; see mail.log")
        return _answers(gateway, PORT)

    progress.wait_for(f"the mail catcher on {gateway}:{PORT}", up, deadline=20)


def stop() -> None:
    daemon.stop(PIDFILE)


def messages(directory: Path = DIR) -> list:
    """Every mail caught so far, oldest first (email.message.Message objects)."""
    if not (directory / "new").is_dir():
        return []
    box = mailbox.Maildir(directory, factory=None, create=False)
    found = [message_from_bytes(box.get_bytes(key)) for key in box.iterkeys()]
    return sorted(found, key=lambda m: m.get("X-Caught-At", ""))


def _serve(host: str, port: int, directory: str) -> None:
    from aiosmtpd.controller import Controller

    for sub in ("tmp", "new", "cur"):  # Maildir(create=True) skips an existing directory
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    box = mailbox.Maildir(directory, create=False)
    # Blocked before the server thread starts, so that sigwait below receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd API
            msg = message_from_bytes(envelope.content)
            msg["X-Caught-At"] = f"{time.time():.6f}"
            msg["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
            box.add(msg)
            return "250 OK"

    controller = Controller(Handler(), hostname=host, port=port)
    controller.start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    controller.stop()


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), sys.argv[3])
