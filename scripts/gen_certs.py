"""Make the TLS certificates and SuperNode keys of a deployment (never commit them).

Writes into ``DIR`` (default ``certs/``, which .gitignore keeps out of git):

- ``ca.crt`` / ``ca.key``: a self-signed CA (P-384 ECDSA, 10 years);
- ``server.pem`` / ``server.key``: the SuperLink's certificate, signed by the CA, whose
  subject alternative names are ``superlink``, ``localhost``, ``127.0.0.1`` and every
  ``--san`` (the host names or addresses the SuperNodes dial);
- ``node-<i>`` / ``node-<i>.pub`` for ``i < --nodes``: each SuperNode's authentication
  key pair (P-384, OpenSSH format, as ``flower-supernode --auth-supernode-private-key``
  and ``flwr supernode register`` expect).

Existing files are kept unless ``--force``: re-running is safe, e.g. from the compose
``certs`` service. Everything is made with ``cryptography``; no openssl needed.

Usage: ``python scripts/gen_certs.py [DIR] [--san 10.0.0.5 --san server.example.org] [--nodes 2]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SANS = ("superlink", "localhost", "127.0.0.1")
VALID_DAYS = 3650


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qfl"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(entry: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(entry))
    except ValueError:
        return x509.DNSName(entry)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("qfl-ca"))
        .issuer_name(_name("qfl-ca"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA384())
    )
    _write(out / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca.key", _key_pem(key), private=True)
    return cert, key


def make_server_cert(out: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, sans: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("superlink"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(s) for s in dict.fromkeys(sans)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write(out / "server.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "server.key", _key_pem(key), private=True)


def make_node_key(out: Path, name: str) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(out / name, private, private=True)
    _write(out / f"{name}.pub", public + f" {name}\n".encode())


def generate(out: Path, sans: list[str] | None = None, nodes: int = 2, force: bool = False) -> list[Path]:
    """Make what is missing in ``out`` (everything with ``force``); return what was written."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if force or not (out / "ca.crt").exists():
        ca, ca_key = make_ca(out)
        written += [out / "ca.crt", out / "ca.key"]
        force = True  # a new CA invalidates the old server certificate
    else:
        ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), password=None)  # type: ignore[assignment]
    if force or not (out / "server.pem").exists():
        make_server_cert(out, ca, ca_key, [*DEFAULT_SANS, *(sans or [])])
        written += [out / "server.pem", out / "server.key"]
    for i in range(nodes):
        if force or not (out / f"node-{i}").exists():
            make_node_key(out, f"node-{i}")
            written += [out / f"node-{i}", out / f"node-{i}.pub"]
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default="certs", type=Path)
    parser.add_argument("--san", action="append", default=[], help="extra host name or IP of the SuperLink (repeatable)")
    parser.add_argument("--nodes", type=int, default=2, help="SuperNode key pairs to make")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args()
    written = generate(args.dir, args.san, args.nodes, args.force)
    print(f"{len(written)} file(s) written to {args.dir}" + "".join(f"\n  {p}" for p in written))


if __name__ == "__main__":
    main()
