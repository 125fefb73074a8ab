"""A client of an ETSI GS QKD 014 key manager (ours or a vendor's)."""

from __future__ import annotations

import base64

import httpx

from transport.base import TransportError


class KeyManagerClient:
    """Get keys for an SAE from the key manager at ``base_url``.

    Parameters
    ----------
    base_url : str
        e.g. ``http://127.0.0.1:8470``.
    sae_id : str
        This application's SAE identity (sent as ``X-SAE-ID``; a real KME reads it from
        the TLS client certificate).
    """

    def __init__(self, base_url: str, sae_id: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.sae_id = sae_id
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, headers={"X-SAE-ID": sae_id})

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
