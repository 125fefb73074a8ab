"""A simulated QKD key manager with the REST interface of ETSI GS QKD 014 (v1.1.1).

Endpoints (JSON), as in the standard:

- ``GET  /api/v1/keys/{slave_SAE_ID}/status``: key size, stored keys, limits;
- ``POST /api/v1/keys/{slave_SAE_ID}/enc_keys`` (``{"number": n, "size": bits}``; or ``GET``
  with query parameters): new keys shared with ``slave_SAE_ID``, each with a ``key_ID``;
- ``POST /api/v1/keys/{master_SAE_ID}/dec_keys`` (``{"key_IDs": [{"key_ID": ...}]}``; or
  ``GET ?key_ID=...``): the keys that ``master_SAE_ID`` obtained for the caller.

In a real deployment the caller's SAE identity comes from its TLS client certificate;
this simulator takes it from the ``X-SAE-ID`` header. Key material comes from one
simulated :class:`~transport.qkd.bb84.BB84Link` per pair of SAEs, run on demand; a key is
handed to its slave once (``dec_keys`` removes it), so every key is used once. If the link
aborts (QBER above the bound) the manager answers ``503`` with the reason, and no key.

A real vendor's key manager can replace this one by changing the URL.

Run: ``python -m transport.qkd.key_manager --port 8470 [--length-km 10] [--eve-fraction 0]``
"""

from __future__ import annotations

import argparse
import base64
import threading
import uuid
from dataclasses import asdict, dataclass, replace

import numpy as np
from fastapi import FastAPI, Header, HTTPException, Query
from pydantic import BaseModel, Field

from transport.qkd.bb84 import BB84Config, BB84Link, QBERAbort, QKDAbort

KEY_SIZE_BITS = 256
MAX_KEYS_PER_REQUEST = 128
PULSES_PER_BATCH = 2_000_000
MAX_BATCHES_PER_REQUEST = 50


class KeyRequest(BaseModel):
    number: int = Field(1, ge=1, le=MAX_KEYS_PER_REQUEST)
    size: int = Field(KEY_SIZE_BITS, ge=8, le=4096, multiple_of=8)


class KeyIdItem(BaseModel):
    key_ID: str


class KeyIdsRequest(BaseModel):
    key_IDs: list[KeyIdItem]


@dataclass
class _Pair:
    link: BB84Link
    pool: np.ndarray  # unused secret bits
    delivered: dict[str, bytes]  # key_ID -> key, waiting for the slave's dec_keys
    pulses: int = 0
    aborted: str | None = None


class KeyStore:
    """Secret-key pools per (master, slave) SAE pair, filled by BB84 on demand."""

    def __init__(self, link_config: BB84Config, seed: int = 0, kme_id: str = "qfl-kme") -> None:
        self.link_config = link_config
        self.seed = seed
        self.kme_id = kme_id
        self._pairs: dict[tuple[str, str], _Pair] = {}
        self._lock = threading.Lock()

    def _pair(self, master: str, slave: str) -> _Pair:
        key = (master, slave)
        if key not in self._pairs:
            # a reproducible, distinct link per pair
            pair_seed = int.from_bytes(uuid.uuid5(uuid.NAMESPACE_OID, f"{self.seed}/{master}/{slave}").bytes[:4], "big")
            self._pairs[key] = _Pair(BB84Link(self.link_config, seed=pair_seed), np.zeros(0, np.uint8), {})
        return self._pairs[key]

    def enc_keys(self, master: str, slave: str, number: int, size: int) -> list[tuple[str, bytes]]:
        """New keys for ``master`` to use with ``slave``. Raises :class:`QKDAbort`."""
        with self._lock:
            pair = self._pair(master, slave)
            if pair.aborted:
                raise QKDAbort(pair.aborted)
            need = number * size
            batches = 0
            while len(pair.pool) < need:
                if batches == MAX_BATCHES_PER_REQUEST:
                    raise QKDAbort(f"out of key: {batches} batches of {PULSES_PER_BATCH} pulses gave too little")
                batches += 1
                pair.pulses += PULSES_PER_BATCH
                try:
                    batch = pair.link.generate_key(PULSES_PER_BATCH)
                except QBERAbort as err:
                    pair.aborted = str(err)  # a detected eavesdropper stops the link for good
                    raise
                except QKDAbort:
                    continue  # this batch distilled no key (finite size): send more pulses
                pair.pool = np.concatenate([pair.pool, batch.key])
            out = []
            for _ in range(number):
                bits, pair.pool = pair.pool[:size], pair.pool[size:]
                key_id = str(uuid.uuid4())
                key = np.packbits(bits).tobytes()
                pair.delivered[key_id] = key
                out.append((key_id, key))
            return out

    def dec_keys(self, master: str, slave: str, key_ids: list[str]) -> list[tuple[str, bytes]]:
        """The keys ``master`` obtained for ``slave``; each is removed once returned."""
        with self._lock:
            pair = self._pair(master, slave)
            missing = [k for k in key_ids if k not in pair.delivered]
            if missing:
                raise KeyError(missing)
            return [(k, pair.delivered.pop(k)) for k in key_ids]

    def status(self, master: str, slave: str) -> dict:
        with self._lock:
            pair = self._pair(master, slave)
            return {
                "source_KME_ID": self.kme_id,
                "target_KME_ID": self.kme_id,
                "master_SAE_ID": master,
                "slave_SAE_ID": slave,
                "key_size": KEY_SIZE_BITS,
                "stored_key_count": len(pair.pool) // KEY_SIZE_BITS,
                "max_key_count": 10**6,
                "max_key_per_request": MAX_KEYS_PER_REQUEST,
                "max_key_size": 4096,
                "min_key_size": 8,
                "max_SAE_ID_count": 0,
                # simulator extras (not in ETSI 014)
                "pulses_sent": pair.pulses,
                "link_aborted": pair.aborted,
            }


def create_app(store: KeyStore) -> FastAPI:
    """The ETSI GS QKD 014 REST API over ``store``."""
    app = FastAPI(title="qfl simulated QKD key manager (ETSI GS QKD 014)")

    def keys_json(keys: list[tuple[str, bytes]]) -> dict:
        return {"keys": [{"key_ID": k, "key": base64.b64encode(v).decode()} for k, v in keys]}

    def enc(slave: str, caller: str, number: int, size: int) -> dict:
        try:
            return keys_json(store.enc_keys(caller, slave, number, size))
        except QKDAbort as err:
            raise HTTPException(status_code=503, detail=f"QKD link aborted: {err}") from err

    def dec(master: str, caller: str, ids: list[str]) -> dict:
        try:
            return keys_json(store.dec_keys(master, caller, ids))
        except KeyError as err:
            raise HTTPException(status_code=404, detail=f"unknown or already used key_ID(s): {err.args[0]}") from err

    @app.get("/api/v1/keys/{slave_sae_id}/status")
    def status(slave_sae_id: str, x_sae_id: str = Header(...)) -> dict:
        return store.status(x_sae_id, slave_sae_id)

    @app.post("/api/v1/keys/{slave_sae_id}/enc_keys")
    def enc_keys_post(slave_sae_id: str, request: KeyRequest, x_sae_id: str = Header(...)) -> dict:
        return enc(slave_sae_id, x_sae_id, request.number, request.size)

    @app.get("/api/v1/keys/{slave_sae_id}/enc_keys")
    def enc_keys_get(
        slave_sae_id: str,
        x_sae_id: str = Header(...),
        number: int = Query(1, ge=1, le=MAX_KEYS_PER_REQUEST),
        size: int = Query(KEY_SIZE_BITS, ge=8, le=4096, multiple_of=8),
    ) -> dict:
        return enc(slave_sae_id, x_sae_id, number, size)

    @app.post("/api/v1/keys/{master_sae_id}/dec_keys")
    def dec_keys_post(master_sae_id: str, request: KeyIdsRequest, x_sae_id: str = Header(...)) -> dict:
        return dec(master_sae_id, x_sae_id, [k.key_ID for k in request.key_IDs])

    @app.get("/api/v1/keys/{master_sae_id}/dec_keys")
    def dec_keys_get(master_sae_id: str, key_ID: str, x_sae_id: str = Header(...)) -> dict:  # noqa: N803
        return dec(master_sae_id, x_sae_id, [key_ID])

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    defaults = BB84Config()
    parser = argparse.ArgumentParser(description="Simulated QKD key manager (ETSI GS QKD 014)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8470)
    parser.add_argument("--seed", type=int, default=0)
    for name, value in asdict(defaults).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--source", default=defaults.source, choices=("wcp", "single-photon"))
    args = parser.parse_args(argv)
    config = replace(defaults, **{k: getattr(args, k) for k in asdict(defaults)})
    uvicorn.run(create_app(KeyStore(config, seed=args.seed)), host=args.host, port=args.port, log_level="warning", ws="none")


if __name__ == "__main__":
    main()
