"""A client of an ETSI GS QKD 014 key manager (ours or a vendor's), over mutual TLS."""

from __future__ import annotations

import base64
import ssl

import httpx

from transport.base import TransportError
from transport.qkd.identity import SaeCredentials


class KeyManagerClient:
    """Get keys for this SAE from the key manager at ``base_url``.

    Parameters
    ----------
    base_url : str
        e.g. ``https://127.0.0.1:8470``.
    credentials : SaeCredentials
        This SAE's client certificate and key, which *are* its identity at the key
        manager, and the CA that signed the key manager's certificate.
    timeout : float
        Seconds per request.
    """

    def __init__(self, base_url: str, credentials: SaeCredentials, timeout: float = 30.0) -> None:
        if not base_url.startswith("https://"):
            raise ValueError(f"the key manager must be reached over https (mutual TLS), got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.sae_id = credentials.sae_id
        context = ssl.create_default_context(cafile=str(credentials.ca))
        context.load_cert_chain(str(credentials.cert), str(credentials.key))
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, verify=context)

    @classmethod
    def of_this_sae(cls, base_url: str) -> KeyManagerClient:
        """A client with this SAE's own certificate, from the environment (``QFL_SAE_*``)."""
        return cls(base_url, SaeCredentials.from_env())

    def enc_key(self, slave_sae_id: str, size_bits: int = 256) -> tuple[str, bytes]:
        """One new key shared with ``slave_sae_id``: ``(key_ID, key)``."""
        data = self._call("POST", f"/api/v1/keys/{slave_sae_id}/enc_keys", json={"number": 1, "size": size_bits})
        item = data["keys"][0]
        return item["key_ID"], base64.b64decode(item["key"])

    def dec_key(self, master_sae_id: str, key_id: str) -> bytes:
        """The key ``master_sae_id`` obtained for us under ``key_id`` (usable once)."""
        data = self._call("POST", f"/api/v1/keys/{master_sae_id}/dec_keys", json={"key_IDs": [{"key_ID": key_id}]})
        return base64.b64decode(data["keys"][0]["key"])

    def status(self, slave_sae_id: str) -> dict:
        return self._call("GET", f"/api/v1/keys/{slave_sae_id}/status")

    def _call(self, method: str, path: str, **kwargs) -> dict:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise TransportError(f"key manager {self.base_url} unreachable: {err}") from err
        if response.status_code != 200:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise TransportError(f"key manager refused ({response.status_code}): {detail}")
        return response.json()

    def close(self) -> None:
        self._client.close()
