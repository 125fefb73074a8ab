"""Who an SAE is: the common name of its TLS client certificate (ETSI GS QKD 014).

Each process that talks to the key manager proves its SAE identity with a certificate
and key named by the environment, like any other credential of the machine it runs on
(never by the run configuration, which every node sees):

- ``QFL_SAE_CERT`` / ``QFL_SAE_KEY``: this SAE's certificate and private key (PEM);
- ``QFL_KMS_CA``: the CA that signed the key manager's HTTPS certificate.

``scripts/gen_certs.py --sae ID`` makes them under ``<certs>/sae/``; the launcher and
docker-compose.yml set the variables for each process.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

SAE_DIR = "sae"
SAE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CERT_ENV, KEY_ENV, CA_ENV = "QFL_SAE_CERT", "QFL_SAE_KEY", "QFL_KMS_CA"


def sae_id_of(cert: x509.Certificate) -> str:
    """The SAE identity a certificate proves: its subject's single common name."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise ValueError("an SAE certificate needs exactly one common name")
    return str(names[0].value)


@dataclass(frozen=True)
class SaeCredentials:
    """Paths of an SAE's certificate, key and the key manager's CA; ``sae_id`` from the cert."""

    cert: Path
    key: Path
    ca: Path

    @property
    def sae_id(self) -> str:
        return sae_id_of(x509.load_pem_x509_certificate(self.cert.read_bytes()))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> SaeCredentials:
        """Read the three paths from the environment; ``ValueError`` names what is missing."""
        env = os.environ if environ is None else environ
        missing = [name for name in (CERT_ENV, KEY_ENV, CA_ENV) if not env.get(name)]
        if missing:
            raise ValueError(
                f"transport qkd needs this SAE's certificate: set {', '.join(missing)} "
                "(scripts/gen_certs.py --sae ID makes them; qfl launch sets them)"
            )
        creds = cls(Path(env[CERT_ENV]), Path(env[KEY_ENV]), Path(env[CA_ENV]))
        for path in (creds.cert, creds.key, creds.ca):
            if not path.is_file():
                raise ValueError(f"transport qkd: {path} does not exist")
        return creds

    @classmethod
    def in_dir(cls, certs: Path, sae_id: str) -> SaeCredentials:
        """The files ``scripts/gen_certs.py`` writes for ``sae_id`` under ``certs``."""
        return cls(certs / SAE_DIR / f"{sae_id}.pem", certs / SAE_DIR / f"{sae_id}.key", certs / "ca.crt")

    def env(self) -> dict[str, str]:
        """The environment variables that name these files."""
        return {CERT_ENV: str(self.cert), KEY_ENV: str(self.key), CA_ENV: str(self.ca)}
