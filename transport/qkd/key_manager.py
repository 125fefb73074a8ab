"""A simulated QKD key manager (KME) with the REST interface of ETSI GS QKD 014 (v1.1.1).

Endpoints (JSON over HTTPS), as in the standard:

- ``GET  /api/v1/keys/{slave_SAE_ID}/status``: key size, stored keys, limits;
- ``POST /api/v1/keys/{slave_SAE_ID}/enc_keys`` (``{"number": n, "size": bits}``; or ``GET``
  with query parameters): new keys shared with ``slave_SAE_ID``, each with a ``key_ID``;
- ``POST /api/v1/keys/{master_SAE_ID}/dec_keys`` (``{"key_IDs": [{"key_ID": ...}]}``; or
  ``GET ?key_ID=...``): the keys that ``master_SAE_ID`` obtained for the caller.

Who is asking: as the standard requires, the caller's SAE identity is the common name of
the TLS client certificate it proved it holds (mutual TLS against the deployment's CA);
no header or parameter can claim another. A client without a certificate, or with one
from another CA, fails the TLS handshake and never reaches the API. Answers follow the
standard's codes: ``400`` a malformed request or an unknown/used key ID, ``401`` a caller
or slave SAE that is not registered, or a key ID issued to someone else, ``503`` a link
that aborted (QBER above the bound), a store that is full or a pair that is busy; and
``413`` a body over :data:`MAX_BODY_BYTES`, ``429`` a caller with
:data:`MAX_IN_FLIGHT_PER_SAE` requests already in flight. No error reply repeats what the
request carried beyond an SAE ID or key ID (both short and validated).

Registered SAEs are the certificates in the registry directory (``sae/*.pem``, made by
``scripts/gen_certs.py --sae ID``): a key is issued only between two of them. The
directory is read again (at most once a second) when a request names an SAE not seen yet,
so a client added to a running deployment only needs its certificate there.

Key material: one :class:`~transport.qkd.bb84.BB84Link` per ordered pair of SAEs,
distilled on demand, its key bits from the OS's cryptographic randomness (two managers
started alike hand out unrelated keys). A key is handed to its slave once (``dec_keys``
removes it). Keys never fetched expire after ``key_ttl_s``; a pair holds at most
``max_stored_keys`` of them. Each pair has its own lock, so distilling for one pair never
holds up another; a request asks for at most :data:`MAX_BITS_PER_REQUEST` bits.

One caller cannot starve the others (:func:`_handshake_gate`, :class:`CallerGuard`,
:func:`_tls_protocol`): TLS handshakes, the dearest work a caller can ask for and done
before its SAE is known, are metered per source address (at most
:data:`MAX_HANDSHAKES_PER_SOURCE` at once and :data:`HANDSHAKES_PER_SOURCE_PER_S` a second
after a burst; at most :data:`MAX_CONNECTIONS_PER_SOURCE` connections, further ones closed
before their handshake); each SAE has at most :data:`MAX_IN_FLIGHT_PER_SAE` requests in
flight (the rest are answered ``429`` at once, before any body is read or any thread is
taken) and at most :data:`MAX_CONNECTIONS_PER_SAE` connections open (a further one answers
``503`` and is closed); an SAE's key requests wait for its earlier ones on an ``asyncio``
lock, so a waiting request holds no worker thread, and a request body is refused (``413``)
as soon as it is known to exceed :data:`MAX_BODY_BYTES`.

Run: ``python -m transport.qkd.key_manager --certs DIR [--port 8470] [--length-km 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from cryptography import x509
from fastapi import FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, Field

from transport.qkd.bb84 import BB84Config, BB84Link, QBERAbort, QKDAbort
from transport.qkd.identity import SAE_DIR, SAE_ID_RE, sae_id_of

KEY_SIZE_BITS = 256
MAX_KEY_SIZE_BITS = 1024
MAX_KEYS_PER_REQUEST = 64
MAX_BITS_PER_REQUEST = 64 * KEY_SIZE_BITS  # ~5 batches: one caller holds its own pair for seconds, not minutes
PULSES_PER_BATCH = 2_000_000
MAX_BATCHES_PER_REQUEST = 50
DEFAULT_KEY_TTL_S = 300.0
DEFAULT_MAX_STORED_KEYS = 1024
PAIR_LOCK_TIMEOUT_S = 20.0
REGISTRY_RESCAN_S = 1.0
MAX_BODY_BYTES = 64 * 1024  # the largest valid body (64 key IDs) is under 6 KiB
MAX_IN_FLIGHT_PER_SAE = 8  # an SAE's requests being served at once; more are answered 429
MAX_CONNECTIONS_PER_SAE = 32  # an SAE's open connections; a further one answers 503, closed
MAX_CONNECTIONS = 1024  # all connections (uvicorn's limit): 32 SAEs at their cap to fill it
OVER_CAP_GRACE_S = 1.0  # a connection over its SAE's cap that sends nothing is closed after this
MAX_CONNECTIONS_PER_SOURCE = 128  # connections from one address, in any state; a further one is closed at accept
MAX_HANDSHAKES_PER_SOURCE = 2  # TLS handshakes of one address under way at once; its other connections wait
HANDSHAKES_PER_SOURCE_PER_S = 8.0  # and started per second, after a burst of MAX_CONNECTIONS_PER_SAE
HANDSHAKE_TIMEOUT_S = 10.0  # a handshake not finished by then is dropped
HANDSHAKE_GRACE_S = 1.0  # and its slot taken back this much later, whatever start_tls does
MAX_ERROR_CHARS = 200


class KeyRequest(BaseModel):
    number: int = Field(1, ge=1, le=MAX_KEYS_PER_REQUEST)
    size: int = Field(KEY_SIZE_BITS, ge=8, le=MAX_KEY_SIZE_BITS, multiple_of=8)


class KeyIdItem(BaseModel):
    key_ID: str = Field(max_length=64)


class KeyIdsRequest(BaseModel):
    key_IDs: list[KeyIdItem] = Field(min_length=1, max_length=MAX_KEYS_PER_REQUEST)


class Refused(Exception):
    """A request the KME refuses; ``status`` is the ETSI GS QKD 014 response code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Pair:
    link: BB84Link
    distill_lock: threading.Lock = field(default_factory=threading.Lock)  # the link and its pool
    keys_lock: threading.Lock = field(default_factory=threading.Lock)  # `delivered`, held briefly
    pool: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))  # unused secret bits
    delivered: dict[str, tuple[bytes, float]] = field(default_factory=dict)  # key_ID -> (key, expiry)
    pulses: int = 0
    aborted: str | None = None


class SaeRegistry:
    """The SAE IDs allowed to get keys: the common names of ``DIR/*.pem``, or a fixed set."""

    def __init__(self, source: Path | set[str]) -> None:
        self._dir = source if isinstance(source, Path) else None
        self._ids: set[str] = set() if self._dir is not None else set(source)
        self._scanned = float("-inf")
        self._lock = threading.Lock()
        self._rescan()

    def _rescan(self) -> None:
        if self._dir is None:
            return
        ids = set()
        for path in sorted(self._dir.glob("*.pem")):
            try:
                ids.add(sae_id_of(x509.load_pem_x509_certificate(path.read_bytes())))
            except ValueError:
                continue  # not a certificate we can read: not registered
        self._ids, self._scanned = ids, time.monotonic()

    def __contains__(self, sae_id: str) -> bool:
        with self._lock:
            if sae_id not in self._ids and time.monotonic() - self._scanned >= REGISTRY_RESCAN_S:
                self._rescan()  # a client added while we run
            return sae_id in self._ids


class KeyStore:
    """Secret-key pools per (master, slave) pair of registered SAEs, filled by BB84 on demand.

    Parameters
    ----------
    link_config : BB84Config
    registry : SaeRegistry
    link_factory : callable
        Makes each pair's link; :class:`BB84Link` (OS randomness) unless a test passes a
        seeded one.
    key_ttl_s : float
        A key not fetched by its slave within this time is destroyed.
    max_stored_keys : int
        Keys a pair may hold for its slave at once; beyond it ``enc_keys`` is refused.
    clock : callable
        Seconds, monotonic (a seam for expiry tests).
    """

    def __init__(
        self,
        link_config: BB84Config,
        registry: SaeRegistry,
        *,
        link_factory: Callable[[BB84Config], BB84Link] = BB84Link,
        key_ttl_s: float = DEFAULT_KEY_TTL_S,
        max_stored_keys: int = DEFAULT_MAX_STORED_KEYS,
        kme_id: str = "qfl-kme",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not key_ttl_s > 0 or max_stored_keys < 1:
            raise ValueError(f"key_ttl_s must be > 0 and max_stored_keys >= 1, got {key_ttl_s}, {max_stored_keys}")
        self.link_config, self.registry, self.link_factory = link_config, registry, link_factory
        self.key_ttl_s, self.max_stored_keys, self.kme_id, self.clock = key_ttl_s, max_stored_keys, kme_id, clock
        self._pairs: dict[tuple[str, str], _Pair] = {}
        self._owner: dict[str, tuple[str, str]] = {}  # key_ID -> (master, slave), for every live key
        self._lock = threading.Lock()  # guards the two dicts above, never held while distilling

    def _pair(self, caller: str, peer: str, master: str, slave: str) -> _Pair:
        """The pair ``master -> slave``, once ``caller`` and ``peer`` are both registered."""
        if not SAE_ID_RE.match(peer):  # not echoed: it may be anything the URL could hold
            raise Refused(400, "malformed SAE ID: 1-64 letters, digits, '.', '_' or '-' expected")
        for sae, role in ((caller, "calling"), (peer, "peer")):
            if sae not in self.registry:
                raise Refused(401, f"{role} SAE {sae!r} is not registered")
        with self._lock:
            pair = self._pairs.get((master, slave))
            if pair is None:
                pair = self._pairs[(master, slave)] = _Pair(self.link_factory(self.link_config))
            return pair

    def _expire(self, pair: _Pair) -> None:
        """Destroy the pair's keys past their expiry (call with ``pair.keys_lock`` held)."""
        now = self.clock()
        gone = [k for k, (_, expiry) in pair.delivered.items() if expiry <= now]
        for key_id in gone:
            del pair.delivered[key_id]
        with self._lock:
            for key_id in gone:
                self._owner.pop(key_id, None)

    def enc_keys(self, master: str, slave: str, number: int, size: int) -> list[tuple[str, bytes]]:
        """New keys for ``master`` to use with ``slave``. Raises :class:`Refused`."""
        if number * size > MAX_BITS_PER_REQUEST:
            raise Refused(400, f"{number} keys of {size} bits exceed {MAX_BITS_PER_REQUEST} bits per request")
        pair = self._pair(master, slave, master, slave)
        if not pair.distill_lock.acquire(timeout=PAIR_LOCK_TIMEOUT_S):
            raise Refused(503, f"the {master} -> {slave} link is busy; retry")
        try:
            if pair.aborted:
                raise Refused(503, f"QKD link aborted: {pair.aborted}")
            with pair.keys_lock:
                self._expire(pair)
                if len(pair.delivered) + number > self.max_stored_keys:
                    raise Refused(503, f"{len(pair.delivered)} keys wait for {slave}: the store is full")
            self._distill(pair, number * size)
            keys = []
            for _ in range(number):
                bits, pair.pool = pair.pool[:size], pair.pool[size:]
                keys.append((str(uuid.uuid4()), np.packbits(bits).tobytes()))
        finally:
            pair.distill_lock.release()
        expiry = self.clock() + self.key_ttl_s
        with pair.keys_lock:
            pair.delivered.update((k, (key, expiry)) for k, key in keys)
        with self._lock:
            self._owner.update((k, (master, slave)) for k, _ in keys)
        return keys

    def _distill(self, pair: _Pair, need: int) -> None:
        batches = 0
        while len(pair.pool) < need:
            if batches == MAX_BATCHES_PER_REQUEST:
                raise Refused(503, f"out of key: {batches} batches of {PULSES_PER_BATCH} pulses gave too little")
            batches += 1
            pair.pulses += PULSES_PER_BATCH
            try:
                batch = pair.link.generate_key(PULSES_PER_BATCH)
            except QBERAbort as err:
                pair.aborted = str(err)  # a detected eavesdropper stops the link for good
                raise Refused(503, f"QKD link aborted: {err}") from err
            except QKDAbort:
                continue  # this batch distilled no key (finite size): send more pulses
            pair.pool = np.concatenate([pair.pool, batch.key])

    def dec_keys(self, slave: str, master: str, key_ids: list[str]) -> list[tuple[str, bytes]]:
        """The keys ``master`` obtained for ``slave`` (the caller); each is removed once returned."""
        pair = self._pair(slave, master, master, slave)
        with self._lock:
            owners = {k: self._owner.get(k) for k in key_ids}
        stolen = [k for k, owner in owners.items() if owner is not None and owner != (master, slave)]
        if stolen:
            raise Refused(401, f"key_ID(s) {stolen} were not issued by {master} to {slave}")
        with pair.keys_lock:
            self._expire(pair)
            missing = [k for k in key_ids if k not in pair.delivered]
            if missing:
                raise Refused(400, f"unknown, expired or already used key_ID(s): {missing}")
            out = [(k, pair.delivered.pop(k)[0]) for k in key_ids]
        with self._lock:
            for k in key_ids:
                self._owner.pop(k, None)
        return out

    def status(self, master: str, slave: str) -> dict:
        pair = self._pair(master, slave, master, slave)
        return {
            "source_KME_ID": self.kme_id,
            "target_KME_ID": self.kme_id,
            "master_SAE_ID": master,
            "slave_SAE_ID": slave,
            "key_size": KEY_SIZE_BITS,
            "stored_key_count": len(pair.pool) // KEY_SIZE_BITS,
            "max_key_count": self.max_stored_keys,
            "max_key_per_request": MAX_KEYS_PER_REQUEST,
            "max_key_size": MAX_KEY_SIZE_BITS,
            "min_key_size": 8,
            "max_SAE_ID_count": 0,
            # simulator extras (not in ETSI 014)
            "pulses_sent": pair.pulses,
            "link_aborted": pair.aborted,
        }

    def stored_keys(self) -> int:
        """Keys issued and not yet fetched, over every pair (a leak check)."""
        with self._lock:
            return len(self._owner)


# --- HTTPS with client certificates ---------------------------------------------------


def _der_of(scope) -> bytes | None:  # type: ignore[no-untyped-def]
    return scope.get("extensions", {}).get("tls", {}).get("client_cert_der")


def _sae_of_der(der: bytes | None) -> str:
    """The SAE ID a verified client certificate (DER) proves; ``ValueError`` if there is none."""
    if der is None:  # cannot happen behind :func:`server_config` (CERT_REQUIRED); refuse anyway
        raise ValueError("no verified client certificate")
    return sae_id_of(x509.load_der_x509_certificate(der))


def caller_of(request: Request) -> str:
    """The caller's SAE ID, from the client certificate the TLS layer verified."""
    try:
        return _sae_of_der(_der_of(request.scope))
    except ValueError as err:
        raise HTTPException(status_code=401, detail=f"client certificate: {err}") from err


async def _refuse(send, status: int, detail: str, *, close: bool = False, retry_after: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Answer ``status`` with ``{"detail": detail}`` (FastAPI's shape), straight from ASGI."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    if close:  # the rest of the request is not read: the connection cannot carry another
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Gone(Exception):
    """The client disconnected while its body came in."""


class CallerGuard:
    """ASGI middleware in front of the API: bounds each SAE's requests in flight, and bodies.

    It runs on the event loop before routing, so a request it refuses costs neither a
    worker thread nor a body read: ``429`` when the caller already has ``max_in_flight``
    requests being served; ``413`` (and the connection closed) as soon as the body is
    known to exceed ``max_body`` bytes, from ``Content-Length`` or while it streams in.
    Neither answer repeats anything the request carried.

    Parameters
    ----------
    app : ASGI application
    max_in_flight : int
        Requests of one SAE (its certificate's common name) served at once.
    max_body : int
        Largest request body, in bytes.
    """

    def __init__(self, app, max_in_flight: int = MAX_IN_FLIGHT_PER_SAE, max_body: int = MAX_BODY_BYTES) -> None:  # type: ignore[no-untyped-def]
        if max_in_flight < 1 or max_body < 1:
            raise ValueError(f"max_in_flight and max_body must be >= 1, got {max_in_flight}, {max_body}")
        self.app, self.max_in_flight, self.max_body = app, max_in_flight, max_body
        self.in_flight: dict[str, int] = {}  # SAE ID -> requests being served (event loop only)

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            caller = _sae_of_der(_der_of(scope))
        except ValueError as err:
            await _refuse(send, 401, f"client certificate: {err}")
            return
        if _declared_length(scope) > self.max_body:
            await _refuse(send, 413, f"request body over {self.max_body} bytes", close=True)
            return
        busy = self.in_flight.get(caller, 0)
        if busy >= self.max_in_flight:
            await _refuse(send, 429, f"SAE {caller!r} has {busy} requests in flight; retry later", retry_after=True)
            return
        self.in_flight[caller] = busy + 1
        try:
            body = await self._body(receive)
            if body is None:
                await _refuse(send, 413, f"request body over {self.max_body} bytes", close=True)
                return
            await self.app(scope, _replay(body, receive), send)
        except _Gone:
            return
        finally:
            left = self.in_flight.pop(caller) - 1
            if left:
                self.in_flight[caller] = left

    async def _body(self, receive) -> bytes | None:  # type: ignore[no-untyped-def]
        """The whole body, or ``None`` once it exceeds ``max_body`` (the rest is never read)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Gone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _declared_length(scope) -> int:  # type: ignore[no-untyped-def]
    """``Content-Length`` (h11 has already refused a malformed one), 0 if absent (chunked)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value)
    return 0


def _replay(body: bytes, receive):  # type: ignore[no-untyped-def]
    """An ASGI ``receive`` that hands over ``body`` (already read) and then defers to ``receive``."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed():  # type: ignore[no-untyped-def]
        return pending.pop() if pending else await receive()

    return replayed


def create_app(store: KeyStore, max_in_flight: int = MAX_IN_FLIGHT_PER_SAE, max_body: int = MAX_BODY_BYTES) -> FastAPI:
    """The ETSI GS QKD 014 REST API over ``store``; the caller is :func:`caller_of`.

    Behind :class:`CallerGuard`. An SAE's key requests (``enc_keys``, which may distil)
    are served one at a time; the next waits on an ``asyncio`` lock, holding no worker
    thread, at most :data:`PAIR_LOCK_TIMEOUT_S` (then ``503``). Every pair an SAE is
    master of is distilled only on its requests, so no SAE holds more than one thread
    distilling, and another SAE's request never waits for it.
    """
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="qfl simulated QKD key manager (ETSI GS QKD 014)")
    app.add_middleware(CallerGuard, max_in_flight=max_in_flight, max_body=max_body)
    serving: dict[str, asyncio.Lock] = {}  # caller -> its key requests, one at a time (event loop only)

    def answer(fn: Callable[[], list[tuple[str, bytes]]]) -> dict:
        try:
            keys = fn()
        except Refused as err:
            raise HTTPException(status_code=err.status, detail=str(err)) from err
        return {"keys": [{"key_ID": k, "key": base64.b64encode(v).decode()} for k, v in keys]}

    async def enc_keys(caller: str, slave: str, number: int, size: int) -> dict:
        lock = serving.setdefault(caller, asyncio.Lock())
        try:
            async with asyncio.timeout(PAIR_LOCK_TIMEOUT_S):
                await lock.acquire()
        except TimeoutError:
            raise HTTPException(status_code=503, detail=f"the links of {caller} are busy; retry") from None
        try:
            return await run_in_threadpool(answer, lambda: store.enc_keys(caller, slave, number, size))
        finally:
            lock.release()

    @app.get("/api/v1/keys/{slave_sae_id}/status")
    def status(slave_sae_id: str, request: Request) -> dict:
        try:
            return store.status(caller_of(request), slave_sae_id)
        except Refused as err:
            raise HTTPException(status_code=err.status, detail=str(err)) from err

    @app.post("/api/v1/keys/{slave_sae_id}/enc_keys")
    async def enc_keys_post(slave_sae_id: str, body: KeyRequest, request: Request) -> dict:
        return await enc_keys(caller_of(request), slave_sae_id, body.number, body.size)

    @app.get("/api/v1/keys/{slave_sae_id}/enc_keys")
    async def enc_keys_get(
        slave_sae_id: str,
        request: Request,
        number: int = Query(1, ge=1, le=MAX_KEYS_PER_REQUEST),
        size: int = Query(KEY_SIZE_BITS, ge=8, le=MAX_KEY_SIZE_BITS, multiple_of=8),
    ) -> dict:
        return await enc_keys(caller_of(request), slave_sae_id, number, size)

    @app.post("/api/v1/keys/{master_sae_id}/dec_keys")
    def dec_keys_post(master_sae_id: str, body: KeyIdsRequest, request: Request) -> dict:
        return answer(lambda: store.dec_keys(caller_of(request), master_sae_id, [k.key_ID for k in body.key_IDs]))

    @app.get("/api/v1/keys/{master_sae_id}/dec_keys")
    def dec_keys_get(master_sae_id: str, request: Request, key_ID: str = Query(max_length=64)) -> dict:  # noqa: N803
        return answer(lambda: store.dec_keys(caller_of(request), master_sae_id, [key_ID]))

    # FastAPI answers a malformed body with 422 and the input in it; the standard's code is
    # 400, and what was sent is not repeated (it may be large, or someone else's)
    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": [str(part)[:64] for part in e.get("loc", ())], "msg": str(e.get("msg", ""))[:MAX_ERROR_CHARS]}
                   for e in exc.errors()[:8]]
        return JSONResponse(status_code=400, content={"message": "bad request format", "details": details})

    return app


def _tls_protocol(max_per_sae: int = MAX_CONNECTIONS_PER_SAE):  # -> type[asyncio.Protocol]
    """uvicorn's HTTP/1.1 protocol, adding the ASGI TLS extension (the verified peer
    certificate) to every request's scope, which uvicorn itself does not, and holding each
    SAE to ``max_per_sae`` open connections: on a further one, a request is answered ``503``
    and the connection closed (closed anyway after :data:`OVER_CAP_GRACE_S` if it sends
    nothing). The count is this server's (a new class per call), kept on its event loop."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    open_by_sae: dict[str, int] = {}

    class MutualTLSProtocol(H11Protocol):
        sae: str | None = None  # counted in ``open_by_sae`` while set

        def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            try:
                self.sae = _sae_of_der(der)
            except ValueError:
                self.sae = None  # CallerGuard answers 401
            over = False
            if self.sae is not None:
                open_by_sae[self.sae] = open_by_sae.get(self.sae, 0) + 1
                over = open_by_sae[self.sae] > max_per_sae
            app, sae = self.app, self.sae

            async def with_peer(scope, receive, send):  # type: ignore[no-untyped-def]
                scope.setdefault("extensions", {})["tls"] = {"client_cert_der": der}
                if over:
                    await _refuse(send, 503, f"SAE {sae!r} has {max_per_sae} connections open; reuse them", close=True)
                    return
                await app(scope, receive, send)

            self.app = with_peer
            if over:
                self.loop.call_later(OVER_CAP_GRACE_S, transport.close)

        def connection_lost(self, exc) -> None:  # type: ignore[no-untyped-def]
            super().connection_lost(exc)
            if self.sae is not None:
                left = open_by_sae.pop(self.sae) - 1
                if left:
                    open_by_sae[self.sae] = left
                self.sae = None

    return MutualTLSProtocol


class _Source:
    """One source address's connections and handshake budget (the handshake gate's bookkeeping)."""

    def __init__(self, now: float, burst: float) -> None:
        self.open = 0  # connections from it, in any state
        self.handshaking = 0
        self.waiting: collections.deque = collections.deque()  # gates whose handshake has not started
        self.tokens, self.stamp, self.burst = burst, now, burst  # a token bucket: one token a handshake
        self.timer: asyncio.TimerHandle | None = None  # the next refill, while some wait for a token

    def refill(self, now: float, rate: float) -> float:
        self.tokens, self.stamp = min(self.burst, self.tokens + (now - self.stamp) * rate), now
        return self.tokens

    def take(self, now: float, rate: float) -> float:
        """0 if a token was taken, else the seconds until there is one."""
        if self.refill(now, rate) >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / rate


def _selector_add_reader(self, fd, callback, *args) -> None:  # type: ignore[no-untyped-def]
    """CPython's ``_SelectorTransport._add_reader`` since the fix of gh-103607: no reader for
    a transport paused in ``connection_made``."""
    if not self.is_reading():
        return
    self._loop._add_reader(fd, callback, *args)


def _honour_early_pause() -> None:
    """Make ``pause_reading()`` in ``connection_made`` hold on Pythons that ignore it.

    Before gh-103607 (Debian bookworm's Python 3.11.2, the compose image's), asyncio adds a
    new connection's reader *after* ``connection_made`` whatever it paused, so the handshake
    gate read a waiting connection's ClientHello itself and the TLS protocol never saw it: the
    handshake timed out (10 s, then EOF for the client) for every SAE whose connection had to
    wait its turn, and under one SAE's flood that was every SAE. This puts the upstream fix in
    place where it is missing (the one method, as upstream wrote it); elsewhere it does nothing.
    """
    from asyncio import selector_events

    if "is_reading" not in selector_events._SelectorTransport._add_reader.__code__.co_names:
        selector_events._SelectorTransport._add_reader = _selector_add_reader


def _handshake_gate(context: ssl.SSLContext, http_protocol: type, *, max_open: int = MAX_CONNECTIONS_PER_SOURCE,
                    max_handshakes: int = MAX_HANDSHAKES_PER_SOURCE, rate: float = HANDSHAKES_PER_SOURCE_PER_S,
                    burst: int = MAX_CONNECTIONS_PER_SAE):  # -> type[asyncio.Protocol]
    """A plain-TCP protocol that runs the TLS handshake itself, a few at a time per source address.

    A handshake is the dearest thing a caller can make the key manager do (here about
    20 ms of the event loop's CPU: signing with the server's key, verifying the client's
    chain and its signature), and it comes before the caller's SAE is known, so the per-SAE
    caps cannot bound it. Each connection's source address is known at accept, so per
    address: at most ``max_open`` connections in any state (a further one is closed at
    once, before its handshake), at most ``max_handshakes`` handshakes under way, and
    ``rate`` handshakes started a second after a first ``burst`` (a token bucket, kept for
    ``burst / rate`` seconds after the address's last connection closes, so closing
    everything does not refill it). The address's other connections wait, their bytes
    unread, costing no CPU, and start in the order they came. So the event loop does at
    most ``max_handshakes`` handshake steps of a flooding address between two steps of
    anyone else's, and spends at most ``rate`` handshakes a second on it, whatever it
    sends. After the handshake the connection is ``http_protocol``'s (this protocol stays
    in between, forwarding). Counts are this server's (a new class per call).
    """
    _honour_early_pause()
    sources: dict[str, _Source] = {}

    def next_handshakes(source: _Source, loop: asyncio.AbstractEventLoop) -> None:
        source.timer = None
        while source.waiting and source.handshaking < max_handshakes:
            wait_s = source.take(loop.time(), rate)
            if wait_s:
                source.timer = loop.call_later(wait_s, next_handshakes, source, loop)
                return
            source.handshaking += 1
            gate = source.waiting.popleft()
            gate.handshake = loop.create_task(gate.run_handshake(source))

    def forget(address: str, loop: asyncio.AbstractEventLoop) -> None:
        source = sources.get(address)
        if source is None or source.open:
            return
        if source.refill(loop.time(), rate) >= burst:
            del sources[address]  # idle, its bucket full again
        else:
            loop.call_later(burst / rate, forget, address, loop)

    class HandshakeGate(asyncio.Protocol):
        def __init__(self, config, server_state, app_state, _loop=None) -> None:  # type: ignore[no-untyped-def]
            self.http = http_protocol(config=config, server_state=server_state, app_state=app_state, _loop=_loop)
            self.loop = _loop or asyncio.get_event_loop()
            self.connections = server_state.connections  # uvicorn closes these on shutdown
            self.raw: asyncio.Transport | None = None
            self.address, self.handshake, self.early, self.ready, self.released = "", None, [], False, False

        def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
            transport.pause_reading()  # nothing is read, and no handshake starts, until its turn (see _honour_early_pause)
            peer = transport.get_extra_info("peername")
            self.raw, self.address = transport, str(peer[0]) if peer else ""
            source = sources.get(self.address)
            if source is None:
                source = sources[self.address] = _Source(self.loop.time(), burst)
            source.open += 1
            if source.open > max_open:
                transport.abort()
                return
            self.connections.add(self)
            source.waiting.append(self)
            if source.timer is None:
                next_handshakes(source, self.loop)

        async def run_handshake(self, source: _Source) -> None:
            # The slot must come back whatever happens to the connection: asyncio's start_tls
            # never returns on a transport closed before it (its handshake timeout then finds
            # nothing to close), returns None for one closed cleanly mid-handshake, and a stuck
            # task would hold one of the address's few slots for good (after a flood, the
            # flooder's address was never served again). So: no handshake on a connection
            # already gone, a bound on the whole await, and any end but a TLS transport releases.
            tls = None
            try:
                if not self.released and not self.raw.is_closing():
                    tls = await asyncio.wait_for(
                        self.loop.start_tls(self.raw, self, context, server_side=True,
                                            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S),
                        HANDSHAKE_TIMEOUT_S + HANDSHAKE_GRACE_S)
            except (OSError, asyncio.TimeoutError):  # refused certificate, timeout, reset
                pass
            finally:
                source.handshaking -= 1
                if source.timer is None:
                    next_handshakes(source, self.loop)
            if tls is None or self.released:  # refused, timed out, or lost on the way
                self.raw.abort()
                self.release()  # its connection_lost may never come (a reset mid-handshake)
                return
            self.connections.discard(self)  # uvicorn's protocol takes it from here
            self.http.connection_made(tls)
            self.ready = True
            for data in self.early:  # what came with the client's last handshake message
                self.http.data_received(data)
            self.early = []

        def data_received(self, data: bytes) -> None:
            if self.ready:
                self.http.data_received(data)
            else:
                self.early.append(data)

        def eof_received(self) -> bool | None:
            return self.http.eof_received() if self.ready else None

        def pause_writing(self) -> None:
            if self.ready:
                self.http.pause_writing()

        def resume_writing(self) -> None:
            if self.ready:
                self.http.resume_writing()

        def connection_lost(self, exc: Exception | None) -> None:
            self.release()
            if self.ready:
                self.http.connection_lost(exc)

        def release(self) -> None:
            """Uncount this connection (once, whichever way it ended)."""
            self.connections.discard(self)
            source = sources.get(self.address)
            if source is None or self.released:
                return
            self.released = True
            source.open -= 1
            if self in source.waiting:
                source.waiting.remove(self)
            if not source.open:
                self.loop.call_later(burst / rate, forget, self.address, self.loop)

        def shutdown(self) -> None:  # uvicorn's, for a connection not yet handed over
            if self.raw is not None:
                self.raw.close()

    return HandshakeGate


def _server_tls(certs: Path) -> ssl.SSLContext:
    """This server's TLS: ``kme.pem``/``kme.key``, client certificates from ``ca.crt`` required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certs / "kme.pem"), str(certs / "kme.key"))
    context.load_verify_locations(cafile=str(certs / "ca.crt"))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_config(store: KeyStore, certs: Path, host: str, port: int):  # -> uvicorn.Config
    """A uvicorn config serving :func:`create_app` over HTTPS with required client certificates.

    ``certs`` holds ``kme.pem``/``kme.key`` (this server) and ``ca.crt`` (whose client
    certificates are accepted), as ``scripts/gen_certs.py --sae ...`` writes them. uvicorn
    listens on plain TCP; :func:`_handshake_gate` runs the TLS handshakes, metered per
    source address.
    """
    import uvicorn

    return uvicorn.Config(
        create_app(store),
        host=host,
        port=port,
        http=_handshake_gate(_server_tls(certs), _tls_protocol()),
        loop="asyncio",  # uvloop starts reading after connection_made whatever it paused: a waiting ClientHello is lost
        ws="none",
        log_level="warning",
        limit_concurrency=MAX_CONNECTIONS,
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    defaults = BB84Config()
    parser = argparse.ArgumentParser(description="Simulated QKD key manager (ETSI GS QKD 014, HTTPS + client certificates)")
    parser.add_argument("--certs", type=Path, required=True, help="ca.crt, kme.pem, kme.key and sae/*.pem (scripts/gen_certs.py)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8470)
    parser.add_argument("--key-ttl-s", type=float, default=DEFAULT_KEY_TTL_S, help="destroy keys not fetched within this time")
    parser.add_argument("--max-stored-keys", type=int, default=DEFAULT_MAX_STORED_KEYS, help="keys a pair may hold at once")
    for name, value in asdict(defaults).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--source", default=defaults.source, choices=("wcp", "single-photon"))
    args = parser.parse_args(argv)
    for name in ("ca.crt", "kme.pem", "kme.key", SAE_DIR):
        if not (args.certs / name).exists():
            parser.error(f"--certs {args.certs}: {name} is missing (make it with scripts/gen_certs.py --sae ID ...)")
    config = replace(defaults, **{k: getattr(args, k) for k in asdict(defaults)})
    store = KeyStore(config, SaeRegistry(args.certs / SAE_DIR), key_ttl_s=args.key_ttl_s, max_stored_keys=args.max_stored_keys)
    uvicorn.Server(server_config(store, args.certs, args.host, args.port)).run()


if __name__ == "__main__":
    main()
