"""Benchmark: one SAE floods the key manager; how long does another pair's request take?

A real key manager (``python -m transport.qkd.key_manager``, its own process) serves HTTPS
with mutual TLS on 127.0.0.1, with certificates made by ``qfl/pki.py`` in a temporary
folder. The probe is SAE ``node-2`` asking for a key shared with ``server`` (the server
then redeems it, so the store stays empty), one request at a time:

1. unloaded: ``--probes`` requests with nothing else running;
2. flooded: the same while SAE ``node-1`` (another process) keeps ``--flood`` requests
   for keys on its own pair in flight at once, each on its own connection, re-sending
   as soon as one is answered, for at most ``--seconds``. It connects from 127.0.0.2
   (``--flood-from``), as another host would: the key manager meters TLS handshakes per
   source address, the one thing it knows of a caller before its handshake.

The table gives the probe's latency in both, their ratio and difference (the baseline is
measured in the same run), and what the flooder got back (status codes, refusal latency).
Loopback only, bounded loops, stops by itself (well under a minute with the defaults).

Run: ``python bench/kme_flood.py [--flood 300] [--probes 30] [--seconds 20] [--flood-from 127.0.0.2]``
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder comes first on sys.path, where a module could shadow
# a package of the project (``transport``): put the project root first instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAES = ["server", "node-1", "node-2"]
START_TIMEOUT_S = 30.0
RAMP_S = 3.0  # the flood is up once every request had an answer, or after this


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_kme(certs: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "transport.qkd.key_manager", "--certs", str(certs), "--host", "127.0.0.1",
           "--port", str(port), "--length-km", "5", "--source", "single-photon"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)


def _client(url: str, certs: Path, sae_id: str):  # noqa: ANN202 (a KeyManagerClient)
    from transport.qkd.client import KeyManagerClient
    from transport.qkd.identity import SaeCredentials

    return KeyManagerClient(url, SaeCredentials.in_dir(certs, sae_id), timeout=60.0)


def _wait_until_serving(url: str, certs: Path, proc: subprocess.Popen) -> None:
    from transport.base import TransportError

    client = _client(url, certs, "server")
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            try:
                client.status("node-2")
                return
            except TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the key manager did not start") from None
                time.sleep(0.2)
    finally:
        client.close()


def _probe(probe, server, n: int, pause_s: float) -> tuple[list[float], list[str]]:  # noqa: ANN001
    """``n`` timed ``enc_keys`` of node-2 -> server (each redeemed untimed); latencies, failures."""
    from transport.base import TransportError

    took, failed = [], []
    for _ in range(n):
        start = time.perf_counter()
        try:
            key_id, _ = probe.enc_key("server")
        except TransportError as err:
            failed.append(str(err)[:80])
            continue
        took.append(time.perf_counter() - start)
        try:
            server.dec_key("node-2", key_id)
        except TransportError as err:  # untimed; an unredeemed key only expires
            failed.append(f"redeem: {str(err)[:72]}")
        time.sleep(pause_s)
    return took, failed


# --- the flooder (a process of its own) ---------------------------------------------------


def _flood(url: str, certs: str, source: str, concurrency: int, seconds: float, ready, stop, results) -> None:  # noqa: ANN001
    asyncio.run(_flood_async(url, Path(certs), source, concurrency, seconds, ready, stop, results))


async def _flood_async(url: str, certs: Path, source: str, concurrency: int, seconds: float, ready, stop,  # noqa: ANN001
                       results) -> None:  # noqa: ANN001
    import ssl

    import httpx

    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    context.load_cert_chain(str(certs / "sae" / "node-1.pem"), str(certs / "sae" / "node-1.key"))
    codes: dict[str, int] = {}
    took_s: dict[str, list[float]] = {}  # status -> the flooder's own latencies
    deadline = time.monotonic() + seconds
    body = {"number": 1, "size": 256}

    async def one(client: httpx.AsyncClient) -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                status = str((await client.post("/api/v1/keys/server/enc_keys", json=body)).status_code)
            except httpx.HTTPError as err:
                status = type(err).__name__
                await asyncio.sleep(0.05)  # a dropped connection: reconnect, not spin
            codes[status] = codes.get(status, 0) + 1
            took_s.setdefault(status, []).append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(base_url=url, timeout=60.0, transport=httpx.AsyncHTTPTransport(
        verify=context, limits=limits, local_address=source)) for _ in range(concurrency)]
    tasks = [asyncio.create_task(one(c)) for c in clients]
    up_by = min(deadline, time.monotonic() + RAMP_S)
    while sum(codes.values()) < concurrency and time.monotonic() < up_by:
        await asyncio.sleep(0.05)  # every connection has had an answer once, or the ramp is over
    ready.set()
    await asyncio.gather(*tasks)
    for client in clients:
        await client.aclose()
    results.put({"codes": codes, "took_s": {k: statistics.median(v) for k, v in took_s.items()}})


# --- the table ----------------------------------------------------------------------------


def _row(name: str, took: list[float], failed: list[str], base: float | None) -> str:
    if not took:
        return f"{name:>10} {'-':>9} {'-':>9} {'-':>9} {'-':>7} {'-':>9} {len(failed):>6}"
    med, worst = statistics.median(took), max(took)
    ratio = f"{med / base:.2f}" if base else "1.00"
    diff = f"{worst - base:+.3f}" if base else "-"
    return f"{name:>10} {len(took):>9} {med * 1e3:>9.1f} {worst * 1e3:>9.1f} {ratio:>7} {diff:>9} {len(failed):>6}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=300, help="requests SAE node-1 keeps in flight at once")
    parser.add_argument("--probes", type=int, default=30, help="timed requests of node-2 in each condition")
    parser.add_argument("--seconds", type=float, default=20.0, help="longest the flood may last")
    parser.add_argument("--flood-from", default="127.0.0.2", help="the flooder's source address (loopback: 127.0.0.0/8)")
    args = parser.parse_args(argv)
    if not (1 <= args.flood <= 2000 and 1 <= args.probes <= 1000 and 0 < args.seconds <= 120):
        parser.error("--flood 1..2000, --probes 1..1000, --seconds up to 120")

    from qfl.pki import generate

    with tempfile.TemporaryDirectory(prefix="qfl-kme-flood-") as tmp:
        certs = Path(tmp) / "certs"
        generate(certs, nodes=0, saes=SAES)
        port = _free_port()
        url = f"https://127.0.0.1:{port}"
        kme = _start_kme(certs, port)
        try:
            _wait_until_serving(url, certs, kme)
            report(url, certs, args)
        finally:
            kme.terminate()
            try:
                kme.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kme.kill()


def report(url: str, certs: Path, args: argparse.Namespace) -> None:
    probe, server = _client(url, certs, "node-2"), _client(url, certs, "server")
    _probe(probe, server, 3, 0.0)  # warm-up: the pair's link exists, connections are open
    alone, alone_failed = _probe(probe, server, args.probes, 0.02)

    ctx = mp.get_context("spawn")
    ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    flooder = ctx.Process(target=_flood, args=(url, str(certs), args.flood_from, args.flood, args.seconds, ready, stop,
                                                        results))
    started = time.monotonic()
    flooder.start()
    ready.wait(timeout=args.seconds)
    flood_up_s = time.monotonic() - started
    during, during_failed = _probe(probe, server, args.probes, 0.02)
    stop.set()
    flood = results.get(timeout=args.seconds + 30)
    flooder.join(timeout=30)
    probe.close()
    server.close()

    base = statistics.median(alone) if alone else None
    print(f"\nKey manager flood (loopback, mutual TLS): node-1 keeps {args.flood} requests in flight on its own pair"
          f" from {args.flood_from};")
    print(f"node-2 -> server enc_keys timed, {args.probes} per condition (flood up after {flood_up_s:.1f} s)\n")
    header = f"{'condition':>10} {'answered':>9} {'median_ms':>9} {'max_ms':>9} {'ratio':>7} {'max-base':>9} {'failed':>6}"
    print(header)
    print("-" * len(header))
    print(_row("unloaded", alone, alone_failed, None))
    print(_row("flooded", during, during_failed, base))
    print("\nflooder's answers (median latency as the flooder saw it, its own process saturated):")
    for code, n in sorted(flood["codes"].items()):
        print(f"  {code}: {n} ({flood['took_s'][code] * 1e3:.0f} ms)")
    for why in sorted(set(alone_failed + during_failed)):
        print(f"probe failure: {why}")


if __name__ == "__main__":
    main()
