"""The Fleet gateway: nginx in front of the SuperLink, passing the Fleet API and nothing else.

Flower 1.42 serves the Fleet API (``/v1/fleet/...``, what SuperNodes call), the Control API
(``/v1/control/...``: ``flwr run``, ``flwr supernode register``) and the runtime API
(``/v1/runtime/...``) on one port, and the open-source SuperLink authenticates no Control
caller: whoever reaches that port can register a key of their own or submit an app that
every SuperNode then executes. (SuperNodes' ``--trusted-entities`` only verifies FABs that
Flower Hub signed; a local ``flwr run`` carries no signature, so it cannot pin the app.)

So the SuperLink listens only where the operator is (a compose network of its own, or
127.0.0.1 on the server machine), and the one public port is this gateway:

- it terminates TLS with its own certificate (``gateway.pem``/``gateway.key``, signed by the
  federation's CA, so SuperNodes verify it with the ``ca.crt`` they already hold);
- it forwards ``POST /v1/fleet/<name>`` and ``GET|HEAD /health`` to the SuperLink over TLS,
  verifying the SuperLink's certificate against ``ca.crt`` under the name ``superlink``;
- the forwarded path is nginx's normalised URI, and only ``[a-z-]`` names pass, so no
  encoding or dot segment reaches the Control or runtime API through it; everything else
  gets 404 from nginx itself.

SuperNode authentication is unchanged: the SuperLink still refuses keys the operator did
not register (``--enable-supernode-auth`` also turns off Fleet self-registration).

``python -m qfl.launch.gateway --listen 0.0.0.0:8000 --superlink superlink:8000 --certs /certs``
writes the configuration into a private temporary folder and becomes nginx (foreground,
logs on stdout and stderr); ``--print`` shows the configuration instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Flower's SuperNode sends every Fleet call as a POST of a protobuf body; the models here
# are a few kB, and a bound keeps a stranger from streaming gigabytes at the SuperLink.
MAX_BODY = "16m"
# pull-messages and pull-object may wait on the SuperLink; Flower's own client gives up later
READ_TIMEOUT_S = 300
FLEET_PATH = r"^/v1/fleet/[a-z-]+$"


def nginx_config(listen: str, superlink: str, certs: Path | str, state_dir: Path | str,
                 superlink_name: str = "superlink") -> str:
    """The text of an ``nginx.conf`` for one gateway.

    ``listen``: ``host:port`` of the public side; ``superlink``: ``host:port`` of the
    SuperLink; ``certs``: folder with ``ca.crt``, ``gateway.pem``, ``gateway.key``;
    ``state_dir``: a writable folder for nginx's pid and buffers (nginx runs unprivileged);
    ``superlink_name``: the name the SuperLink's certificate must carry.
    """
    certs, state = Path(certs), Path(state_dir)
    proxy = f"""
            proxy_pass https://qfl_superlink$uri;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 2;
            proxy_ssl_trusted_certificate {certs}/ca.crt;
            proxy_ssl_name {superlink_name};
            proxy_ssl_server_name on;
            proxy_read_timeout {READ_TIMEOUT_S}s;
            proxy_send_timeout {READ_TIMEOUT_S}s;"""
    temp = "\n".join(f"    {kind}_temp_path {state}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# written by qfl/launch/gateway.py: only the Fleet API passes
worker_processes 1;
pid {state}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 1024; }}
http {{
    access_log /dev/stdout;
{temp}
    server_tokens off;
    client_max_body_size {MAX_BODY};
    # nothing spills to the temp paths: started as root, nginx's workers run as nobody and
    # cannot write to the 0700 state folder (a 98 KB FAB failed so with "Permission denied");
    # request bodies up to the cap stay in memory, larger responses stream instead of buffering
    client_body_buffer_size {MAX_BODY};
    proxy_max_temp_file_size 0;
    upstream qfl_superlink {{ server {superlink}; keepalive 16; }}
    server {{
        listen {listen} ssl;
        ssl_certificate {certs}/gateway.pem;
        ssl_certificate_key {certs}/gateway.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location ~ "{FLEET_PATH}" {{
            limit_except POST {{ deny all; }}{proxy}
        }}
        location = /health {{
            limit_except GET {{ deny all; }}{proxy}
        }}
        location / {{ return 404; }}
    }}
}}
"""


def gateway_command(listen: str, superlink: str, certs: Path | str, python: str = sys.executable) -> list[str]:
    """The gateway as a process (the launcher's form; docker-compose.yml runs the same)."""
    return [python, "-m", "qfl.launch.gateway", "--listen", listen, "--superlink", superlink, "--certs", str(certs)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="0.0.0.0:8000", help="public host:port (default 0.0.0.0:8000)")
    parser.add_argument("--superlink", required=True, help="the SuperLink's host:port (its Control API is never public)")
    parser.add_argument("--certs", type=Path, required=True, help="folder with ca.crt, gateway.pem and gateway.key")
    parser.add_argument("--superlink-name", default="superlink", help="the name on the SuperLink's certificate")
    parser.add_argument("--print", action="store_true", help="print the configuration and exit")
    args = parser.parse_args(argv)
    if args.print:
        print(nginx_config(args.listen, args.superlink, args.certs, "/tmp/qfl-gateway", args.superlink_name))
        return
    for name in ("ca.crt", "gateway.pem", "gateway.key"):
        if not (args.certs / name).is_file():
            parser.error(f"--certs {args.certs}: {name} is missing (scripts/gen_certs.py makes it)")
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if nginx is None:
        parser.error("nginx is not installed (Debian: apt-get install nginx-light)")
    state = Path(tempfile.mkdtemp(prefix="qfl-gateway-"))  # 0700: nginx's buffers hold Fleet bodies
    conf = state / "nginx.conf"
    conf.write_text(nginx_config(args.listen, args.superlink, args.certs.resolve(), state, args.superlink_name))
    sys.stdout.flush()
    os.execv(nginx, [nginx, "-e", "stderr", "-c", str(conf), "-g", "daemon off;"])


if __name__ == "__main__":
    main()
