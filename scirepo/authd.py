"""scirepo-authd: the host's login oracle for the hub, and its client.

The hub runs in a container and must not see /etc/shadow, so a small root daemon on the host
checks passwords with PAM (service `scirepo`) and looks up Unix accounts for it. It listens on
a Unix socket (paths.authd_socket, in /run/scirepo, mode 0750 root) and speaks one JSON object
per line each way:

    {"op": "authenticate", "username": u, "password": p}
        -> {"ok": true, "user": U, "password_expired": bool} | {"ok": false, "error": "..."}
    {"op": "lookup", "username": u}
        -> {"ok": true, "user": U} | {"ok": false, "error": "..."}

with U = {"name", "uid", "gid", "home", "shell", "groups": [names], "group_ids": [gids]}.
Only members of users.group (from the site config) are accepted. A failed authentication is
answered only after FAIL_DELAY, whatever failed (unknown user, wrong password, not a member),
so that neither the message nor the timing tells an outsider which accounts exist, and no
password of an account outside users.group (root!) is ever tried through the hub.

`query()` / `aquery()` are the client used by the hub's authenticator: standard library only.
CLI: `scirepo authd serve [--socket PATH]` and `scirepo authd check USERNAME` (password on
stdin). Also runnable as `python -m scirepo.authd [--config FILE] serve|check ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import getpass
import grp
import json
import logging
import os
import pwd
import random
import re
import signal
import socket
import stat
import struct
import sys
import time

from scirepo import pam

log = logging.getLogger("scirepo.authd")

DEFAULT_SOCKET = "/run/scirepo/authd.sock"
DEFAULT_SERVICE = "scirepo"
MAX_LINE = 64 * 1024  # bytes per request line, newline included
READ_TIMEOUT = 30.0  # idle seconds before a connection is closed
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
# Drop a connection that keeps sending one oversized line instead of discarding forever.
MAX_DISCARD = 1024 * 1024
FAIL_DELAY = 1.0  # minimum seconds before a failed authentication is answered
FAIL_JITTER = 0.25
AUTH_FAILED = "invalid username or password"
# Unix login names as useradd accepts them by default, plus upper case (NSS/LDAP accounts).
USERNAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
MAX_PASSWORD = 4096


class AuthdError(OSError):
    """The daemon could not be reached, did not answer in time or answered garbage.

    An OSError, so that callers can treat every way of not getting an answer alike.
    """


# --------------------------------------------------------------------------- client


def _encode(request: dict) -> bytes:
    return json.dumps(request, separators=(",", ":")).encode() + b"\n"


def _decode(line: bytes) -> dict:
    try:
        answer = json.loads(line)
    except ValueError as exc:
        raise AuthdError(f"malformed answer from authd: {exc}") from None
    if not isinstance(answer, dict) or "ok" not in answer:
        raise AuthdError("malformed answer from authd: not an object with 'ok'")
    return answer


def query(socket_path: str, request: dict, timeout: float = 15.0) -> dict:
    """Send one request to authd and return its answer (blocking).

    Raises AuthdError if the socket cannot be reached, the answer takes longer than
    `timeout` seconds in total, or it is not a JSON object.
    """
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(_encode(request))
            buf = bytearray()
            while not buf.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("timed out")
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_LINE:
                    raise AuthdError("answer from authd too long")
    except OSError as exc:
        raise AuthdError(f"authd at {socket_path}: {exc}") from exc
    if not buf:
        raise AuthdError(f"authd at {socket_path} closed the connection without answering")
    return _decode(bytes(buf))


async def aquery(socket_path: str, request: dict, timeout: float = 15.0) -> dict:
    """Like query(), for asyncio callers (the hub's authenticator)."""

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_unix_connection(socket_path, limit=MAX_LINE)
        try:
            writer.write(_encode(request))
            await writer.drain()
            return await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        line = await asyncio.wait_for(exchange(), timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise AuthdError(f"authd at {socket_path}: {exc or type(exc).__name__}") from exc
    if not line:
        raise AuthdError(f"authd at {socket_path} closed the connection without answering")
    return _decode(line)


# --------------------------------------------------------------------------- accounts


class NotAllowed(Exception):
    """The account may not use the platform; the message is safe to show for lookups."""


def user_record(name: str, group: str) -> dict:
    """U for account `name` if it exists and belongs to `group`, else NotAllowed."""
    if not USERNAME_RE.match(name):
        raise NotAllowed("invalid username")
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise NotAllowed("no such user") from None
    gids = os.getgrouplist(pw.pw_name, pw.pw_gid)
    try:
        required = grp.getgrnam(group).gr_gid
    except KeyError:
        log.error("group %s (users.group) does not exist: nobody may log in", group)
        raise NotAllowed(f"not a member of {group}") from None
    if required not in gids:
        raise NotAllowed(f"not a member of {group}")
    names = []
    for gid in gids:
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            names.append(str(gid))
    return {
        "name": pw.pw_name,
        "uid": pw.pw_uid,
        "gid": pw.pw_gid,
        "home": pw.pw_dir,
        "shell": pw.pw_shell,
        "groups": names,
        "group_ids": gids,
    }


# --------------------------------------------------------------------------- server


class Server:
    """The asyncio Unix socket server; one instance per `authd serve`."""

    def __init__(self, socket_path: str, group: str, service: str, workers: int = 4) -> None:
        self.socket_path = socket_path
        self.group = group
        self.service = service
        # PAM and NSS calls block: they run here, never on the event loop.
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="pam")
        self.connections = 0

    # -- requests

    async def handle_request(self, line: bytes, peer: str) -> dict:
        try:
            request = json.loads(line)
        except ValueError:
            # Never log the line itself: it may hold a password.
            log.warning("%s: malformed JSON (%d bytes)", peer, len(line))
            return {"ok": False, "error": "malformed request: not JSON"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "malformed request: not a JSON object"}
        op = request.get("op")
        username = request.get("username")
        if not isinstance(username, str):
            return {"ok": False, "error": "malformed request: username must be a string"}
        if op == "lookup":
            return await self.lookup(username, peer)
        if op == "authenticate":
            password = request.get("password")
            if not isinstance(password, str):
                return {"ok": False, "error": "malformed request: password must be a string"}
            return await self.authenticate(username, password, peer)
        return {"ok": False, "error": "unknown op (expected authenticate or lookup)"}

    async def lookup(self, username: str, peer: str) -> dict:
        loop = asyncio.get_running_loop()
        try:
            user = await loop.run_in_executor(self.pool, user_record, username, self.group)
        except NotAllowed as exc:
            log.info("%s: lookup %s refused: %s", peer, _shown(username), exc)
            return {"ok": False, "error": str(exc)}
        log.info("%s: lookup %s ok", peer, _shown(username))
        return {"ok": True, "user": user}

    async def authenticate(self, username: str, password: str, peer: str) -> dict:
        loop = asyncio.get_running_loop()
        started = loop.time()
        why = None
        user = None
        expired = False
        try:
            if not password or len(password) > MAX_PASSWORD:
                raise NotAllowed("empty or oversized password")
            # Membership first: PAM never sees a password for an account outside users.group.
            user = await loop.run_in_executor(self.pool, user_record, username, self.group)
            result = await loop.run_in_executor(
                self.pool, lambda: pam.authenticate(username, password, self.service)
            )
            if not result.ok:
                raise NotAllowed(f"{result.step}: {result.reason}")
            expired = result.password_expired
        except NotAllowed as exc:
            why = str(exc)
        if why is None:
            log.info(
                "%s: authenticate %s ok%s",
                peer,
                _shown(username),
                " (password expired)" if expired else "",
            )
            return {"ok": True, "user": user, "password_expired": expired}
        log.warning("%s: authenticate %s failed: %s", peer, _shown(username), why)
        # The same delay and message for every failure; see the module docstring.
        delay = FAIL_DELAY + random.uniform(0, FAIL_JITTER) - (loop.time() - started)  # noqa: S311
        await asyncio.sleep(max(delay, 0))
        return {"ok": False, "error": AUTH_FAILED}

    # -- connections

    async def read_line(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next request line; b"" for an oversized one, None at EOF."""
        try:
            return await asyncio.wait_for(reader.readuntil(b"\n"), READ_TIMEOUT)
        except asyncio.IncompleteReadError as exc:
            return exc.partial or None  # a last line without newline still counts
        except asyncio.LimitOverrunError as exc:
            consumed = exc.consumed
        # Drop the oversized line piece by piece so that memory stays bounded.
        discarded = 0
        while True:
            await asyncio.wait_for(reader.readexactly(consumed), READ_TIMEOUT)
            discarded += consumed
            if discarded > MAX_DISCARD:
                raise ConnectionError("oversized request without end")
            try:
                await asyncio.wait_for(reader.readuntil(b"\n"), READ_TIMEOUT)
                return b""
            except asyncio.IncompleteReadError:
                return None
            except asyncio.LimitOverrunError as exc:
                consumed = exc.consumed

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = _peer_name(writer)
        self.connections += 1
        try:
            if self.connections > MAX_CONNECTIONS:
                log.warning("%s: too many connections, refused", peer)
                await self.send(writer, {"ok": False, "error": "busy, try again"})
                return
            while True:
                line = await self.read_line(reader)
                if line is None:
                    return
                if line == b"":
                    log.warning("%s: request longer than %d bytes", peer, MAX_LINE)
                    answer = {"ok": False, "error": f"request longer than {MAX_LINE} bytes"}
                elif not line.strip():
                    continue
                else:
                    answer = await self.handle_request(line, peer)
                await self.send(writer, answer)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("%s: connection closed: %s", peer, exc or type(exc).__name__)
        except Exception:
            # One bad request must never take the server down.
            log.exception("%s: internal error", peer)
            with contextlib.suppress(Exception):
                await self.send(writer, {"ok": False, "error": "internal error"})
        finally:
            self.connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def send(writer: asyncio.StreamWriter, answer: dict) -> None:
        writer.write(_encode(answer))
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)

    # -- lifecycle

    def _prepare_socket_path(self) -> None:
        parent = os.path.dirname(self.socket_path)
        if not os.path.isdir(parent):
            # Normally systemd's RuntimeDirectory= made it; for manual runs do the same.
            os.makedirs(parent, mode=0o750, exist_ok=True)
        try:
            mode = os.lstat(self.socket_path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise SystemExit(f"{self.socket_path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(self.socket_path)
            except OSError:
                os.unlink(self.socket_path)  # stale, from a daemon that died
                return
        raise SystemExit(f"another authd is already serving {self.socket_path}")

    async def run(self) -> None:
        self._prepare_socket_path()
        old_umask = os.umask(0o117)  # the socket is born 0660, never briefly wider
        try:
            server = await asyncio.start_unix_server(
                self.serve_connection, self.socket_path, limit=MAX_LINE
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o660)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "serving %s (PAM service %s, group %s)", self.socket_path, self.service, self.group
        )
        try:
            async with server:
                await stop.wait()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            self.pool.shutdown(wait=False, cancel_futures=True)
            log.info("stopped")


def _shown(username: str) -> str:
    """A username for the log: quoted and escaped (no forged lines), and short."""
    return repr(username[:40] + ("..." if len(username) > 40 else ""))


def _peer_name(writer: asyncio.StreamWriter) -> str:
    """pid/uid of the client from SO_PEERCRED, for the log."""
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        return f"pid={pid} uid={uid}"
    except (OSError, AttributeError):
        return "peer=?"


# --------------------------------------------------------------------------- CLI


def load_config(path: str | None) -> dict:
    """The resolved site config: `path` (--config), else $SCIREPO_CONFIG, else site.json."""
    # Imported here so that the client half of this module stays standard-library only.
    from scirepo import config

    return config.resolve(config.load(config.locate(path)))


def _socket_from(args: argparse.Namespace, cfg: dict | None) -> str:
    if args.socket:
        return args.socket
    return (cfg or {}).get("paths", {}).get("authd_socket", DEFAULT_SOCKET)


def cmd_serve(args: argparse.Namespace) -> int:
    # Its own handler: the daemon logs every request, with levels, whatever the CLI set up.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not pam.available():
        log.error("libpam cannot be loaded")
        return 1
    cfg = load_config(getattr(args, "config", None))
    server = Server(_socket_from(args, cfg), cfg["users"]["group"], args.pam_service, args.workers)
    asyncio.run(server.run())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    cfg = None
    if not args.socket:
        cfg = load_config(getattr(args, "config", None))
    request: dict = {"op": "lookup", "username": args.username}
    if not args.lookup:
        if sys.stdin.isatty():
            password = getpass.getpass(f"Password for {args.username}: ")
        else:
            password = sys.stdin.readline().removesuffix("\n")
        request = {"op": "authenticate", "username": args.username, "password": password}
    try:
        answer = query(_socket_from(args, cfg), request, timeout=args.timeout)
    except AuthdError as exc:
        print(f"scirepo authd check: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2))
    return 0 if answer.get("ok") else 1


def _add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="authd_command", required=True)

    serve = sub.add_parser("serve", help="run the daemon (as root; systemd runs it)")
    serve.add_argument("--socket", help="socket path (default: paths.authd_socket)")
    serve.add_argument(
        "--pam-service", default=DEFAULT_SERVICE, help="PAM service name (default: %(default)s)"
    )
    serve.add_argument("--workers", type=int, default=4, help="threads for PAM calls")
    serve.add_argument("-v", "--verbose", action="store_true")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="ask the daemon about USERNAME (password read from stdin)")
    check.add_argument("username")
    check.add_argument("--socket", help="socket path (default: paths.authd_socket)")
    check.add_argument("--lookup", action="store_true", help="look up only, no password")
    check.add_argument("--timeout", type=float, default=15.0)
    check.set_defaults(func=cmd_check)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `authd serve` and `authd check` to the scirepo CLI.

    Each subcommand sets `func(args) -> exit code`; the site config comes from
    `args.config` when the top-level parser has it, else SCIREPO_CONFIG, else
    /etc/scirepo/site.json.
    """
    parser = subparsers.add_parser("authd", help="the host's PAM login daemon for the hub")
    _add_commands(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: python -m scirepo.authd [--config FILE] serve|check ..."""
    parser = argparse.ArgumentParser(prog="python -m scirepo.authd")
    parser.add_argument("--config", help="site config (default: $SCIREPO_CONFIG, site.json)")
    _add_commands(parser)
    args = parser.parse_args(argv)
    from scirepo import config

    try:
        return args.func(args)
    except config.ScirepoError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
