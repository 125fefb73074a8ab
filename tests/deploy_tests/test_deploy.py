"""docker-compose.yml, the Dockerfile and the certificate script, checked against the app.

No Docker engine runs here: the compose file is parsed and every command is compared
with what the launcher runs (qfl/launcher.py builds both), so the two cannot drift.
"""

from __future__ import annotations

import re

import yaml
from flwr.common.config import parse_config_args

from qfl.common.config import NodeConfig, RunConfig
from qfl.launch.commands import superlink_command, supernode_command
from qfl.launch.config import app_defaults
from qfl.launcher import PROJECT_DIR

COMPOSE = yaml.safe_load((PROJECT_DIR / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
NODES = sorted((s for s in SERVICES if s.startswith("supernode-")), key=lambda s: int(s.split("-")[1]))
PORT = 8000


def test_compose_has_the_federations_services():
    assert {"certs", "superlink", "gateway", "register", "submit", "key-manager"} <= set(SERVICES)
    assert len(NODES) >= 2
    assert SERVICES["key-manager"]["profiles"] == ["qkd"]  # only with the qkd transport
    assert "--insecure" not in yaml.safe_dump(COMPOSE)  # TLS everywhere, by default


def test_superlink_runs_the_launchers_command_with_tls_and_node_auth():
    service = SERVICES["superlink"]
    assert service["command"] == superlink_command(PORT, host="0.0.0.0", tls_dir="/certs", node_auth=True)
    assert "ports" not in service  # its Control API is for the operator only
    assert "runs:/app/runs" in service["volumes"] and "superlink-secrets:/certs:ro" in service["volumes"]
    assert service["depends_on"]["certs"]["condition"] == "service_completed_successfully"


def test_only_the_gateway_is_published_and_no_node_shares_a_network_with_the_superlink():
    from qfl.launch.gateway import gateway_command

    published = {name for name, service in SERVICES.items() if service.get("ports")}
    assert published == {"gateway"} and SERVICES["gateway"]["ports"] == [f"{PORT}:{PORT}"]
    assert SERVICES["gateway"]["command"] == gateway_command(f"0.0.0.0:{PORT}", f"superlink:{PORT}", "/certs", python="python")
    networks = {name: set(service.get("networks", [])) for name, service in SERVICES.items()}
    assert networks["superlink"] == {"control"} and COMPOSE["networks"]["control"]["internal"] is True
    assert {"register", "submit"} <= {name for name, nets in networks.items() if "control" in nets}
    for name in NODES:
        assert networks[name] == {"fleet"}, name
    assert SERVICES["certs"]["network_mode"] == "none"


def test_each_service_mounts_only_its_own_secrets_and_runs_unprivileged():
    mounts = {name: [v for v in service.get("volumes", []) if "secrets" in v or v.startswith("ca:")]
              for name, service in SERVICES.items()}
    expected = {"superlink": "superlink-secrets", "gateway": "gateway-secrets", "key-manager": "key-manager-secrets",
                "register": "operator-secrets", "submit": "operator-secrets",
                **{name: f"node-{i}-secrets" for i, name in enumerate(NODES)}}
    for name, volume in expected.items():
        assert mounts[name] == [f"{volume}:/certs:ro"], name
    # only the one-shot certs service holds the CA's volume, and every role's to fill
    holders = {name for name, volumes in mounts.items() if any(v.startswith("ca:") for v in volumes)}
    assert holders == {"certs"}
    assert SERVICES["certs"]["user"] == "root" and all("user" not in s for n, s in SERVICES.items() if n != "certs")
    roles = {v.split(":")[1].removeprefix("/secrets/") for v in SERVICES["certs"]["volumes"] if "/secrets/" in v}
    assert roles == {"superlink", "gateway", "key-manager", "operator", *[f"node-{i}" for i in range(len(NODES))]}
    dockerfile = (PROJECT_DIR / "Dockerfile").read_text()
    assert "useradd --uid 10001" in dockerfile and dockerfile.rstrip().splitlines()[-2] == "USER qfl"


def test_each_supernode_has_its_own_partition_key_and_the_launchers_command():
    n = len(NODES)
    for i, name in enumerate(NODES):
        service = SERVICES[name]
        assert service["command"] == supernode_command(
            f"gateway:{PORT}", 9094, i, n, root_cert="/certs/ca.crt", auth_key=f"/certs/node-{i}"
        )
        node_config = parse_config_args([service["command"][service["command"].index("--node-config") + 1]])
        node = NodeConfig.from_node_config(node_config)
        assert (node.partition_id, node.num_partitions) == (i, n)
        assert service["depends_on"]["register"]["condition"] == "service_completed_successfully"


def test_certs_and_registration_cover_every_node():
    certs = SERVICES["certs"]["command"]
    assert certs[:3] == ["python", "scripts/gen_certs.py", "/ca"]
    assert certs[certs.index("--bundle") + 1] == "/secrets" and certs[certs.index("--owner") + 1] == "10001:10001"
    assert int(certs[certs.index("--nodes") + 1]) == len(NODES)
    register = SERVICES["register"]["command"]
    assert register[:2] == ["python", "scripts/compose/register.py"]
    assert register[2:] == [f"/certs/node-{i}.pub" for i in range(len(NODES))]


def test_submit_uses_the_compose_connection_and_a_valid_run_config():
    connection = (PROJECT_DIR / "scripts/compose/config.toml").read_text()
    assert f'address = "superlink:{PORT}"' in connection and 'root-certificates = "/certs/ca.crt"' in connection
    assert "insecure" not in connection
    assert SERVICES["submit"]["command"] == ["python", "scripts/compose/submit.py"]
    submit = (PROJECT_DIR / "scripts/compose/submit.py").read_text()
    assert '"flwr", "run", ".", "compose", "--stream"' in submit and '"--run-config"' in submit
    default = re.fullmatch(r"\$\{QFL_RUN_CONFIG:-(.*)\}", SERVICES["submit"]["environment"]["QFL_RUN_CONFIG"]).group(1)
    overrides = parse_config_args([default])
    defaults = app_defaults(PROJECT_DIR)
    assert set(overrides) <= set(defaults)  # Flower would refuse an unknown key
    cfg = RunConfig.from_run_config({**defaults, **overrides})
    assert cfg.output_dir == "/app/runs" and cfg.min_nodes <= len(NODES)


def test_key_manager_service_is_the_launchers_with_tls_and_every_sae_certified():
    from qfl.launch.commands import key_manager_command

    cmd = SERVICES["key-manager"]["command"]
    port = int(cmd[cmd.index("--port") + 1])
    assert cmd == key_manager_command("/certs", port, host="0.0.0.0", python="python")
    header = (PROJECT_DIR / "docker-compose.yml").read_text()
    assert f'kms-url="https://key-manager:{port}"' in header
    certs = SERVICES["certs"]["command"]
    saes = [certs[i + 1] for i, a in enumerate(certs) if a == "--sae"]
    assert saes == ["server", *[f"node-{i}" for i in range(len(NODES))]]
    # each process proves its own SAE identity
    assert SERVICES["superlink"]["environment"]["QFL_SAE_CERT"] == "/certs/sae/server.pem"
    for i, name in enumerate(NODES):
        env = SERVICES[name]["environment"]
        assert env["QFL_SAE_CERT"] == f"/certs/sae/node-{i}.pem" and env["QFL_SAE_KEY"] == f"/certs/sae/node-{i}.key"


def test_dockerfile_installs_cpu_torch_before_the_project_and_bakes_nothing_of_this_machine():
    text = (PROJECT_DIR / "Dockerfile").read_text()
    torch_at = text.index("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    assert torch_at < text.index("pip install -e .")
    assert "ARG BASE_IMAGE=python:3.11-slim" in text  # users get the official image
    assert 'ARG PIP_EXTRA_CA_B64=""' in text and "rm -rf /build /tmp/pip-ca.pem" in text  # empty unless a test sets it
    ignored = (PROJECT_DIR / ".dockerignore").read_text().split()
    assert {"certs", ".venv", "runs"} <= set(ignored)
    assert "certs/" in (PROJECT_DIR / ".gitignore").read_text().split()


# --- scripts/gen_certs.py ---------------------------------------------------------------


def test_gen_certs_makes_a_chain_with_the_sans_and_flower_loadable_node_keys(tmp_path):
    import importlib.util

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.cli.supernode.register import try_load_public_key

    spec = importlib.util.spec_from_file_location("gen_certs", PROJECT_DIR / "scripts" / "gen_certs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    written = gen.generate(tmp_path, sans=["10.203.0.1", "fl.example.org"], nodes=2)
    assert {p.name for p in written} == {"ca.crt", "ca.key", "server.pem", "server.key", "gateway.pem", "gateway.key",
                                         "node-0", "node-0.pub", "node-1", "node-1.pub"}
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"superlink", "localhost", "fl.example.org"} <= set(sans.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.203.0.1"}
    assert (tmp_path / "server.key").stat().st_mode & 0o077 == 0  # private keys: owner only
    assert try_load_public_key(tmp_path / "node-0.pub")  # what `flwr supernode register` reads
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    key = load_ssh_private_key((tmp_path / "node-1").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    # re-running keeps what exists (the compose service runs on every `up`); --force replaces
    before = (tmp_path / "ca.crt").read_bytes()
    assert gen.generate(tmp_path, nodes=3) == [tmp_path / "node-2", tmp_path / "node-2.pub"]
    assert (tmp_path / "ca.crt").read_bytes() == before
    gen.generate(tmp_path, nodes=1, force=True)
    assert (tmp_path / "ca.crt").read_bytes() != before


def test_deploy_doc_commands_use_the_launchers_flags():
    text = (PROJECT_DIR / "docs" / "deploy.md").read_text()
    for flag in ("--ssl-ca-certfile", "--enable-supernode-auth", "--root-certificates", "--auth-supernode-private-key",
                 "flwr supernode register", "--node-config", "--disable-runtime-dependency-installation"):
        assert flag in text, flag


def test_the_sites_override_gives_each_supernode_its_own_read_only_data_and_the_launchers_command():
    sites = yaml.safe_load((PROJECT_DIR / "docker-compose.sites.yml").read_text())["services"]
    assert set(sites) == set(NODES)
    for i, (name, site) in enumerate(zip(NODES, ("site-a.csv", "site-b.csv"))):
        service = sites[name]
        data_path = f"/data/{site}"
        assert service["command"] == supernode_command(
            f"gateway:{PORT}", 9094, i, len(NODES), root_cert="/certs/ca.crt", auth_key=f"/certs/node-{i}",
            node_config={"data-path": data_path})
        node = NodeConfig.from_node_config(parse_config_args([service["command"][service["command"].index("--node-config") + 1]]))
        assert node.data_path == data_path
        (mount,) = service["volumes"]
        host, container, mode = mount.rsplit(":", 2)
        assert container == "/data" and mode == "ro"
        default = PROJECT_DIR / host.split(":-")[1].rstrip("}")  # the example sites, when QFL_SITE_* is unset
        assert (default / site).is_file()
