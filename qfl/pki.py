"""The certificates and keys of a deployment (never commit them), made with ``cryptography``.

:func:`generate` writes into a directory (``certs/`` by default, which .gitignore keeps
out of git; the launcher uses ``<run>/certs``):

- ``ca.crt`` / ``ca.key``: a self-signed CA (P-384 ECDSA, 10 years);
- ``server.pem`` / ``server.key``: the SuperLink's certificate, signed by the CA, whose
  subject alternative names are ``superlink``, ``localhost``, ``127.0.0.1`` and every
  ``--san`` (the host names or addresses the SuperNodes dial);
- ``gateway.pem`` / ``gateway.key``: the Fleet gateway's certificate
  (:mod:`qfl.launch.gateway`, the one public port), names ``gateway``, ``localhost``,
  ``127.0.0.1`` and every ``--san``;
- ``node-<i>`` / ``node-<i>.pub`` for ``i < --nodes``: each SuperNode's authentication
  key pair (P-384, OpenSSH format, as ``flower-supernode --auth-supernode-private-key``
  and ``flwr supernode register`` expect);
- with SAEs (``--sae``): ``kme.pem`` / ``kme.key``, the QKD key manager's HTTPS
  certificate (names ``key-manager``, ``localhost``, ``127.0.0.1`` and every
  ``--kme-san``), and ``sae/<id>.pem`` / ``sae/<id>.key`` for each SAE: the TLS client
  certificate whose common name *is* the SAE's identity at the key manager (ETSI GS QKD
  014). The key manager takes ``sae/`` as its registry of SAEs;
- with identities (``--identity``, which ``qfl launch --transport secagg`` and compose pass):
  ``secagg/node-<i>.pem`` / ``.key``, each node's secure-aggregation identity: an ML-DSA-65
  key in a certificate whose common name is ``node-<i>`` and whose extended key usage is
  secure aggregation's own (:mod:`transport.secagg_identity`); a node signs its
  secure-aggregation keys with it, and its peers verify them against ``ca.crt``.

:func:`bundle` (``--bundle DIR``) then copies into each role's folder under ``DIR``
(``superlink``, ``gateway``, ``node-<i>``, ``key-manager``, ``operator``) only what that
role holds (:func:`role_files`), so each container mounts its own secrets and no running
one holds ``ca.key``.

Existing files are kept unless ``--force``: re-running is safe, e.g. from the compose
``certs`` service. Everything is made with ``cryptography``; no openssl needed. Private
keys are created with mode 0600 from their first byte; the folders this makes are 0700.

Usage: ``python scripts/gen_certs.py [DIR] [--san 10.0.0.5] [--nodes 2] [--sae server --sae node-0]
[--identity node-0 --identity node-1]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from transport.qkd.identity import SAE_DIR, SAE_ID_RE
from transport.secagg_identity import IDENTITY_DIR, make_identity

DEFAULT_SANS = ("superlink", "localhost", "127.0.0.1")
KME_SANS = ("key-manager", "localhost", "127.0.0.1")
GATEWAY_SANS = ("gateway", "localhost", "127.0.0.1")
VALID_DAYS = 3650


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qfl"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(entry: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(entry))
    except ValueError:
        return x509.DNSName(entry)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write ``data``; a ``private`` file is created anew with mode 0600 from its first byte
    (an old one is removed first: truncating it would keep its mode), never through a link."""
    if not private:
        path.write_bytes(data)
        return
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _private_dir(path: Path) -> None:
    """Make ``path`` (mode 0700) if it is missing; one that exists keeps its mode."""
    if not path.exists():
        path.mkdir(mode=0o700, parents=True)
        os.chmod(path, 0o700)  # mkdir's mode is masked by the umask; nothing is in it yet


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


def _signed(subject: str, key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
            usage: x509.ObjectIdentifier, sans: list[str] | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(s) for s in dict.fromkeys(sans)]), critical=False)
    return builder.sign(ca_key, hashes.SHA384())


def make_server_cert(out: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, sans: list[str],
                     name: str = "server", subject: str = "superlink") -> None:
    """``<name>.pem`` / ``<name>.key``: a TLS server certificate for ``sans``."""
    key = ec.generate_private_key(ec.SECP384R1())
    cert = _signed(subject, key, ca, ca_key, ExtendedKeyUsageOID.SERVER_AUTH, sans)
    _write(out / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / f"{name}.key", _key_pem(key), private=True)


def make_sae_cert(out: Path, sae_id: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> None:
    """``sae/<sae_id>.pem`` / ``.key``: a TLS client certificate whose common name is the SAE ID."""
    if not SAE_ID_RE.match(sae_id):
        raise ValueError(f"SAE ID {sae_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
    key = ec.generate_private_key(ec.SECP384R1())
    cert = _signed(sae_id, key, ca, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH)
    _private_dir(out / SAE_DIR)
    _write(out / SAE_DIR / f"{sae_id}.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / SAE_DIR / f"{sae_id}.key", _key_pem(key), private=True)


def make_identity_cert(out: Path, name: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> None:
    """``secagg/<name>.pem`` / ``.key``: a node's secure-aggregation identity (ML-DSA-65), certified by the CA."""
    key, cert = make_identity(ca, ca_key, name, VALID_DAYS)
    _private_dir(out / IDENTITY_DIR)
    _write(out / IDENTITY_DIR / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / IDENTITY_DIR / f"{name}.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                                serialization.NoEncryption()), private=True)


def make_node_key(out: Path, name: str) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(out / name, private, private=True)
    _write(out / f"{name}.pub", public + f" {name}\n".encode())


def generate(out: Path, sans: list[str] | None = None, nodes: int = 2, force: bool = False,
             saes: list[str] | None = None, kme_sans: list[str] | None = None,
             identities: list[str] | None = None) -> list[Path]:
    """Make what is missing in ``out`` (everything with ``force``); return what was written."""
    _private_dir(out)
    written: list[Path] = []
    if force or not (out / "ca.crt").exists():
        ca, ca_key = make_ca(out)
        written += [out / "ca.crt", out / "ca.key"]
        force = True  # a new CA invalidates every certificate it signed
    else:
        ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), password=None)  # type: ignore[assignment]
    if force or not (out / "server.pem").exists():
        make_server_cert(out, ca, ca_key, [*DEFAULT_SANS, *(sans or [])])
        written += [out / "server.pem", out / "server.key"]
    if force or not (out / "gateway.pem").exists():
        make_server_cert(out, ca, ca_key, [*GATEWAY_SANS, *(sans or [])], name="gateway", subject="gateway")
        written += [out / "gateway.pem", out / "gateway.key"]
    for i in range(nodes):
        if force or not (out / f"node-{i}").exists():
            make_node_key(out, f"node-{i}")
            written += [out / f"node-{i}", out / f"node-{i}.pub"]
    if saes:
        if force or not (out / "kme.pem").exists():
            make_server_cert(out, ca, ca_key, [*KME_SANS, *(kme_sans or [])], name="kme", subject="key-manager")
            written += [out / "kme.pem", out / "kme.key"]
        for sae_id in saes:
            if force or not (out / SAE_DIR / f"{sae_id}.pem").exists():
                make_sae_cert(out, sae_id, ca, ca_key)
                written += [out / SAE_DIR / f"{sae_id}.pem", out / SAE_DIR / f"{sae_id}.key"]
    for name in identities or []:
        if force or not (out / IDENTITY_DIR / f"{name}.pem").exists():
            make_identity_cert(out, name, ca, ca_key)
            written += [out / IDENTITY_DIR / f"{name}.pem", out / IDENTITY_DIR / f"{name}.key"]
    return written


def role_files(out: Path, role: str) -> list[str]:
    """What ``role`` holds, as paths relative to ``out``: its own keys, and ``ca.crt``.

    ``superlink`` (and the ServerApp it starts): its TLS key and SAE ``server``;
    ``gateway``: its TLS key; ``node-<i>``: its authentication key, SAE ``node-<i>`` and
    secure-aggregation identity ``node-<i>`` (the server holds none);
    ``key-manager``: its TLS key and every SAE *certificate* (its registry, no SAE key);
    ``operator``: the nodes' public keys, to register them. Nobody gets ``ca.key``.
    """
    if role == "superlink":
        own = ["server.pem", "server.key", f"{SAE_DIR}/server.pem", f"{SAE_DIR}/server.key"]
    elif role == "gateway":
        own = ["gateway.pem", "gateway.key"]
    elif re.fullmatch(r"node-\d+", role):
        own = [role, f"{SAE_DIR}/{role}.pem", f"{SAE_DIR}/{role}.key", f"{IDENTITY_DIR}/{role}.pem",
               f"{IDENTITY_DIR}/{role}.key"]
    elif role == "key-manager":
        own = ["kme.pem", "kme.key", *sorted(f"{SAE_DIR}/{p.name}" for p in (out / SAE_DIR).glob("*.pem"))]
    elif role == "operator":
        own = sorted(p.name for p in out.glob("node-*.pub"))
    else:
        raise ValueError(f"unknown role {role!r}: superlink, gateway, node-<i>, key-manager or operator")
    return ["ca.crt", *(name for name in own if (out / name).is_file())]


def bundle(out: Path, dest: Path, owner: tuple[int, int] | None = None) -> dict[str, list[str]]:
    """Copy each role's files from ``out`` into ``dest/<role>`` for every role folder there.

    Files are replaced whole (private ones 0600 from their first byte), folders are 0700,
    and with ``owner`` (uid, gid) everything is handed to the unprivileged user the
    services run as. A file a role no longer holds is removed from its folder.
    """
    done = {}
    for folder in sorted(p for p in dest.iterdir() if p.is_dir()):
        names = role_files(out, folder.name)
        for name in names:
            target = folder / name
            _private_dir(target.parent)
            private = not name.endswith((".crt", ".pem", ".pub"))
            _write(target, (out / name).read_bytes(), private=private)
        for stale in [p for p in folder.rglob("*") if p.is_file() and str(p.relative_to(folder)) not in names]:
            stale.unlink()
        if owner is not None:
            for path in [folder, *folder.rglob("*")]:
                os.chown(path, *owner, follow_symlinks=False)
        os.chmod(folder, 0o700)
        done[folder.name] = names
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default="certs", type=Path)
    parser.add_argument("--san", action="append", default=[], help="extra host name or IP of the SuperLink (repeatable)")
    parser.add_argument("--nodes", type=int, default=2, help="SuperNode key pairs to make")
    parser.add_argument("--sae", action="append", default=[], help="SAE ID to certify for the QKD key manager (repeatable)")
    parser.add_argument("--identity", action="append", default=[],
                        help="secure-aggregation identity node-<i> to certify (ML-DSA-65; repeatable)")
    parser.add_argument("--kme-san", action="append", default=[], help="extra host name or IP of the key manager")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    parser.add_argument("--bundle", type=Path, help="copy each role's own files into the role folders under this folder")
    parser.add_argument("--owner", help="UID:GID to give the bundled files (the services' unprivileged user)")
    args = parser.parse_args(argv)
    written = generate(args.dir, args.san, args.nodes, args.force, args.sae, args.kme_san, args.identity)
    print(f"{len(written)} file(s) written to {args.dir}" + "".join(f"\n  {p}" for p in written))
    if args.bundle is not None:
        owner = tuple(int(x) for x in args.owner.split(":")) if args.owner else None
        for role, names in bundle(args.dir, args.bundle, owner).items():  # type: ignore[arg-type]
            print(f"{role}: {' '.join(names)}")


if __name__ == "__main__":
    main()
