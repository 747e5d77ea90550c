"""The local certificate authority of an operator's machine.

When the site config names no certificate, scirepo makes a CA here (.scirepo/tls/ca.crt,
the file users and tests trust) and signs the HTTPS certificate of the host and the
certificate of the local registry with it. Keys are mode 0600 and never leave this
machine except the host's own key, which the playbook copies to the host.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import os
import subprocess
from pathlib import Path

TLS_DIR = Path(__file__).resolve().parent.parent / ".scirepo" / "tls"
CA_CERT = TLS_DIR / "ca.crt"
CA_KEY = TLS_DIR / "ca.key"
DAYS = 825  # the longest validity browsers accept for a leaf certificate


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@contextlib.contextmanager
def _private():
    """Files made inside are readable by their owner only (keys, while being written)."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


# A new P-256 key without passphrase, written to the -keyout that follows.
NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


def ensure_ca() -> Path:
    """Create the CA once; reuse it afterwards so that trust survives redeploys."""
    TLS_DIR.mkdir(parents=True, exist_ok=True)
    TLS_DIR.chmod(0o700)
    if not (CA_CERT.exists() and CA_KEY.exists()):
        with _private():
            _openssl("req", "-x509", *NEW_KEY, "-keyout", str(CA_KEY), "-out", str(CA_CERT),
                     "-days", "3650", "-subj", "/CN=scirepo local CA",
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
        CA_CERT.chmod(0o644)
    return CA_CERT


def _san(names: list[str]) -> str:
    out = []
    for n in names:
        try:
            ipaddress.ip_address(n)
            out.append(f"IP:{n}")
        except ValueError:
            out.append(f"DNS:{n}")
    return ",".join(out)


def ensure_server_cert(name: str, names: list[str]) -> tuple[Path, Path]:
    """A certificate for `names` signed by the CA; remade when the names change."""
    crt, key, sans = TLS_DIR / f"{name}.crt", TLS_DIR / f"{name}.key", TLS_DIR / f"{name}.sans"
    wanted = _san(list(dict.fromkeys(names)))
    if crt.exists() and key.exists() and sans.exists() and sans.read_text() == wanted:
        return crt, key
    csr, ext = TLS_DIR / f"{name}.csr", TLS_DIR / f"{name}.ext"
    with _private():
        _openssl("req", *NEW_KEY, "-keyout", str(key), "-out", str(csr),
                 "-subj", f"/CN={names[0]}")  # fmt: skip
        ext.write_text(
            f"subjectAltName={wanted}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        )
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(CA_CERT), "-CAkey", str(CA_KEY),
                 "-CAcreateserial", "-out", str(crt), "-days", str(DAYS),
                 "-extfile", str(ext))  # fmt: skip
    csr.unlink()
    ext.unlink()
    crt.chmod(0o644)
    sans.write_text(wanted)
    return crt, key


def spki_hash(cert: Path) -> str:
    """base64 SHA-256 of a certificate's public key, for Chromium's per-key trust flag
    (`--ignore-certificate-errors-spki-list`)."""
    pem = subprocess.run(
        ["openssl", "x509", "-pubkey", "-noout", "-in", str(cert)], check=True, capture_output=True
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=pem, check=True, capture_output=True
    ).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()
