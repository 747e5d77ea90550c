"""An operator's own certificate (`tls.certificate`, `tls.key`): the deploy puts it in
place and nginx serves it; deploying again without it goes back to the local CA's
(and `scirepo health` passes again).

The operator's CA here is made by the test with openssl, as a stand-in for a public CA
(or an ACME-issued chain): a real TLS client verifies the served chain against it.
"""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest
import yaml

from scirepo import tls

from .conftest import deploy_local

pytestmark = pytest.mark.host


def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def operator_pair(tmp_path_factory):
    """(ca.crt, server.crt, server.key) of an operator CA that is not the local CA."""
    d = tmp_path_factory.mktemp("operator-tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=Operator Test CA", cwd=d)  # fmt: skip
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost", cwd=d)  # fmt: skip
    (d / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "extendedKeyUsage=serverAuth\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf",
            cwd=d)  # fmt: skip
    return d / "ca.crt", d / "server.crt", d / "server.key"


def served_issuer(port: int, cafile) -> str:
    """The issuer CN of the certificate the host serves, verified against `cafile`."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname="localhost") as conn,
    ):
        issuer = dict(x[0] for x in conn.getpeercert()["issuer"])
    return issuer["commonName"]


def test_operator_certificate_is_served_and_replaced_again(
    local_host, cfg, site_path, operator_pair, tmp_path
):
    ca, crt, key = operator_pair
    port = cfg["local"]["https_port"]
    site = yaml.safe_load(site_path.read_text())
    site["tls"] = {"certificate": str(crt), "key": str(key)}
    operator_site = tmp_path / "site.yml"
    operator_site.write_text(yaml.safe_dump(site))
    try:
        res = deploy_local(operator_site, health=False)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert served_issuer(port, ca) == "Operator Test CA"
        with pytest.raises(ssl.SSLCertVerificationError):
            served_issuer(port, tls.CA_CERT)
    finally:
        back = deploy_local(site_path)
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr[-3000:]
    assert served_issuer(port, tls.CA_CERT) != "Operator Test CA"
    with pytest.raises(ssl.SSLCertVerificationError):
        served_issuer(port, ca)
