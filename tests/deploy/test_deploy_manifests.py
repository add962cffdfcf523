"""The deployment artifacts in deploy/, checked offline.

Nothing here builds an image or starts a container: the Kubernetes manifests
are validated against the API schemas shipped by kubernetes-validate, and the
compose file, Dockerfile, nginx and SQL files are read as text or YAML and
held to the security properties the runbook promises (non-root, read-only
root filesystem, no capabilities, probes, limits, no public /metrics, the
audit tables insert-only for the app role).

``python tests/deploy/test_deploy_manifests.py --write-grants-configmap``
regenerates deploy/k8s/grants-sql.configmap.yaml from deploy/postgres/grants.sql.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30"

GATEWAY_UID = 10001
GATEWAY_LABELS = {"app.kubernetes.io/name": "refgate", "app.kubernetes.io/component": "gateway"}
APPEND_ONLY = ("audit_event", "audit_leaf", "audit_node", "audit_checkpoint", "directory_entry")
EXAMPLE_SECRET = "secret.example.yaml"
TMP = "/tmp"  # noqa: S108 - a mount point in the manifests, not a temporary file


# --- helpers ---------------------------------------------------------------


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_all(path):
            out.append((path.name, doc))
    return out


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for _, doc in manifests()
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def grants_configmap_text() -> str:
    """deploy/k8s/grants-sql.configmap.yaml, rendered from deploy/postgres/grants.sql."""
    sql = (DEPLOY / "postgres" / "grants.sql").read_text()
    body = "".join(f"    {line}" if line.strip() else "\n" for line in sql.splitlines(True))
    return (
        "# GENERATED from deploy/postgres/grants.sql: do not edit here. Regenerate with\n"
        "#   python tests/deploy/test_deploy_manifests.py --write-grants-configmap\n"
        "# (tests/deploy checks that the two are identical).\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: refgate-grants-sql\n"
        "  labels:\n"
        "    app.kubernetes.io/name: refgate\n"
        "    app.kubernetes.io/component: migration\n"
        "data:\n"
        "  grants.sql: |\n" + body
    )


def sql_without_comments(path: Path) -> str:
    return "\n".join(line.split("--", 1)[0] for line in path.read_text().splitlines())


# --- Kubernetes ------------------------------------------------------------

VALIDATED = [
    pytest.param(doc, id=f"{name}:{doc['kind']}/{doc['metadata']['name']}")
    for name, doc in manifests()
    if doc["kind"] != "Kustomization"
]


@pytest.mark.parametrize("doc", VALIDATED)
def test_manifest_is_valid_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_manifests_carry_no_namespace() -> None:
    for name, doc in manifests():
        assert "namespace" not in doc.get("metadata", {}), name
    assert "namespace" not in load_all(K8S / "kustomization.yaml")[0]


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kustomization = load_all(K8S / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", EXAMPLE_SECRET}
    assert listed == on_disk
    assert kustomization["images"][0]["name"] == "refgate"


def test_example_secrets_hold_placeholders_only() -> None:
    secrets = load_all(K8S / EXAMPLE_SECRET)
    assert {s["metadata"]["name"] for s in secrets} == {
        "refgate-db",
        "refgate-db-owner",
        "refgate-keys",
    }
    for secret in secrets:
        assert "data" not in secret
        for key, value in secret["stringData"].items():
            password_free_url = re.fullmatch(r"postgresql://[\w-]+@[^:@/\s]+(:\d+)?/\S*", value)
            assert "CHANGE_ME" in value or password_free_url, (
                f"{secret['metadata']['name']}/{key} looks real"
            )


def test_every_workload_container_is_locked_down() -> None:
    workloads = [one("Deployment", "refgate"), one("Job", "refgate-migrate")]
    for workload in workloads:
        spec = pod_spec(workload)
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in all_containers(spec):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, c["name"]
            assert sc["runAsUser"] > 0, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc.get("privileged", False) is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert "add" not in sc["capabilities"], c["name"]
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", c["name"]
            assert c["resources"]["requests"], c["name"]
            assert c["resources"]["limits"], c["name"]
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == TMP]
            assert tmp, f"{c['name']}: no writable /tmp"


def test_gateway_deployment_probes_resources_and_workers() -> None:
    deployment = one("Deployment", "refgate")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"] == GATEWAY_LABELS
    spec = pod_spec(deployment)
    (gateway,) = spec["containers"]
    assert spec["securityContext"]["runAsUser"] == GATEWAY_UID
    assert gateway["securityContext"]["runAsUser"] == GATEWAY_UID
    assert gateway["args"][0] == "serve"
    assert gateway["args"][gateway["args"].index("--workers") + 1] == "2"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert gateway["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert gateway["resources"]["limits"]["memory"] == "512Mi"
    assert gateway["resources"]["requests"]["memory"]
    assert gateway["resources"]["requests"]["cpu"]
    tmp_volume = next(v for v in spec["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp_volume


def test_gateway_gets_its_secrets_by_name_and_never_the_owner_login() -> None:
    spec = pod_spec(one("Deployment", "refgate"))
    (gateway,) = spec["containers"]
    env = {e["name"]: e for e in gateway["env"]}
    assert env["REFGATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "refgate-db"
    keys = next(v for v in spec["volumes"] if v["name"] == "keys")
    assert keys["secret"]["secretName"] == "refgate-keys"
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == "keys")
    assert mount["readOnly"] is True
    for var in (
        "REFGATE_KEYS__TOKEN_KEY_FILE",
        "REFGATE_KEYS__LOG_KEY_FILE",
        "REFGATE_KEYS__WEBHOOK_KEY_FILE",
    ):
        assert env[var]["value"].startswith(mount["mountPath"] + "/")
        name = env[var]["value"].rsplit("/", 1)[1]
        assert {"key": name, "path": name} in keys["secret"]["items"]
    assert gateway["envFrom"] == [{"configMapRef": {"name": "refgate-config"}}]
    assert "refgate-db-owner" not in yaml.safe_dump(one("Deployment", "refgate"))


def test_configmap_is_production_and_holds_no_secret() -> None:
    data = one("ConfigMap", "refgate-config")["data"]
    assert data["REFGATE_ENV"] == "production"
    assert data["REFGATE_PUBLIC_URL"].startswith("https://")
    assert data["REFGATE_AUDIT__LOG_ORIGIN"]
    assert not any("DATABASE_URL" in k or "PASSWORD" in k for k in data)


def test_migration_job_migrates_as_owner_then_applies_the_grants() -> None:
    job = one("Job", "refgate-migrate")
    spec = pod_spec(job)
    assert spec["restartPolicy"] == "Never"
    (migrate,) = spec["initContainers"]
    (grants,) = spec["containers"]
    assert migrate["args"] == ["migrate"]
    env = {e["name"]: e for e in migrate["env"]}
    assert env["REFGATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "refgate-db-owner"
    assert grants["command"] == ["psql"]
    assert "ON_ERROR_STOP=1" in grants["args"]
    sql_path = grants["args"][grants["args"].index("-f") + 1]
    mount = next(m for m in grants["volumeMounts"] if sql_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "refgate-grants-sql"
    # The password reaches psql through the environment, not its command line.
    assert {e["name"] for e in grants["env"]} >= {"PGPASSWORD"}


def test_grants_configmap_is_grants_sql_verbatim() -> None:
    path = K8S / "grants-sql.configmap.yaml"
    assert path.read_text() == grants_configmap_text(), (
        "regenerate: python tests/deploy/test_deploy_manifests.py --write-grants-configmap"
    )
    data = one("ConfigMap", "refgate-grants-sql")["data"]["grants.sql"]
    assert data == (DEPLOY / "postgres" / "grants.sql").read_text()


def test_service_hpa_and_pdb_target_the_gateway_pods() -> None:
    service = one("Service", "refgate")
    assert service["spec"]["selector"] == GATEWAY_LABELS
    assert service["spec"]["type"] == "ClusterIP"

    hpa = one("HorizontalPodAutoscaler", "refgate")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "refgate",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]

    pdb = one("PodDisruptionBudget", "refgate")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"] == GATEWAY_LABELS
    assert pdb["spec"]["minAvailable"] >= 1


def test_gateway_network_policy_admits_only_the_ingress_controller() -> None:
    policy = one("NetworkPolicy", "refgate-gateway")["spec"]
    assert policy["podSelector"]["matchLabels"] == GATEWAY_LABELS
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    assert set(source) == {"namespaceSelector"}
    assert source["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]


def test_gateway_egress_is_postgres_dns_and_public_https_only() -> None:
    policy = one("NetworkPolicy", "refgate-gateway")["spec"]
    ports = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert ports == {("TCP", 5432), ("UDP", 53), ("TCP", 53), ("TCP", 443)}
    https = next(r for r in policy["egress"] if r["ports"] == [{"protocol": "TCP", "port": 443}])
    (block,) = https["to"]
    # Webhook URLs must not reach cloud metadata or the cluster's private ranges.
    assert {"169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(
        block["ipBlock"]["except"]
    )


def test_migration_pods_accept_no_connections() -> None:
    policy = one("NetworkPolicy", "refgate-migrate")["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "migration"
    assert "Ingress" in policy["policyTypes"]
    assert policy["ingress"] == []


def test_ingress_routes_an_allowlist_without_metrics() -> None:
    ingress = one("Ingress", "refgate")
    assert ingress["spec"]["tls"]
    paths = [p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert "/" not in paths
    assert not any(p.startswith(("/metrics", "/health")) for p in paths)
    assert {"/v1", "/oauth/token", "/.well-known"} <= set(paths)
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "1m"


# --- Docker Compose --------------------------------------------------------


def test_compose_has_the_expected_services() -> None:
    assert set(compose()["services"]) == {"db", "migrate", "db-grants", "gateway", "proxy"}
    assert compose()["services"]["db"]["image"].startswith("postgres:16")


def test_gateway_waits_for_migrations_and_grants() -> None:
    services = compose()["services"]
    gateway = services["gateway"]["depends_on"]
    assert gateway["migrate"]["condition"] == "service_completed_successfully"
    assert gateway["db-grants"]["condition"] == "service_completed_successfully"
    assert services["db-grants"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["proxy"]["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["environment"]["REFGATE_DB_USER"] == "refgate_owner"
    assert services["gateway"]["environment"]["REFGATE_DB_USER"] == "refgate_app"


def test_compose_containers_are_read_only_without_capabilities() -> None:
    services = compose()["services"]
    for name in ("migrate", "db-grants", "gateway", "proxy"):
        svc = services[name]
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert "cap_add" not in svc, name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert "privileged" not in svc, name
    for name in ("migrate", "gateway"):
        assert services[name]["user"] == f"{GATEWAY_UID}:{GATEWAY_UID}"
        assert any(t.startswith(TMP) for t in services[name]["tmpfs"])


def test_gateway_runs_two_workers_with_keys_from_secrets() -> None:
    gateway = compose()["services"]["gateway"]
    command = gateway["command"]
    assert command[0] == "serve"
    assert command[command.index("--workers") + 1] == "2"
    env = gateway["environment"]
    secrets = set(gateway["secrets"])
    for var, secret in (
        ("REFGATE_KEYS__TOKEN_KEY_FILE", "refgate_token_key"),
        ("REFGATE_KEYS__LOG_KEY_FILE", "refgate_log_key"),
        ("REFGATE_KEYS__WEBHOOK_KEY_FILE", "refgate_webhook_key"),
    ):
        assert env[var] == f"/run/secrets/{secret}"
        assert secret in secrets
    assert gateway["deploy"]["resources"]["limits"]["memory"] == "512m"


def test_only_the_proxy_publishes_a_port() -> None:
    services = compose()["services"]
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"proxy"}
    assert services["proxy"]["ports"] == ["443:8443"]
    assert compose()["networks"]["backend"]["internal"] is True
    assert services["db"]["networks"] == ["backend"]


def test_long_running_services_have_health_checks() -> None:
    services = compose()["services"]
    for name in ("db", "gateway", "proxy"):
        assert services[name]["healthcheck"]["test"], name
    assert "/health/ready" in " ".join(services["gateway"]["healthcheck"]["test"])


def test_compose_secrets_come_from_git_ignored_files() -> None:
    for name, secret in compose()["secrets"].items():
        path = (DEPLOY / secret["file"]).resolve()
        ignore = path.parent / ".gitignore"
        assert ignore.is_file(), f"{name}: {path.parent} has no .gitignore"
        assert ignore.read_text().splitlines()[-2:] == ["*", "!.gitignore"], name


def test_shell_snippets_escape_dollars_from_compose_interpolation() -> None:
    services = compose()["services"]
    snippets = [services["gateway"]["entrypoint"][2], services["db-grants"]["command"][0]]
    for snippet in snippets:
        assert "$" in snippet
        assert re.search(r"(?<!\$)\$(?!\$)", snippet.replace("$$", "")) is None, snippet


def test_database_init_applies_roles_sql_from_its_mount() -> None:
    db = compose()["services"]["db"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in db["volumes"]}
    assert mounts["/docker-entrypoint-initdb.d"] == "./postgres/initdb"
    script = (DEPLOY / "postgres" / "initdb" / "10-refgate-roles.sh").read_text()
    sql_target = re.search(r"-f (\S+roles\.sql)", script)
    assert sql_target is not None
    assert mounts[sql_target.group(1)] == "./postgres/roles.sql"
    grants = compose()["services"]["db-grants"]
    grants_mounts = {v.split(":")[1]: v.split(":")[0] for v in grants["volumes"]}
    assert grants_mounts["/opt/refgate/sql/grants.sql"] == "./postgres/grants.sql"
    assert "/opt/refgate/sql/grants.sql" in grants["command"][0]


def test_mtls_overlay_mounts_into_the_include_of_refgate_conf() -> None:
    overlay = yaml.safe_load((DEPLOY / "compose.mtls.yaml").read_text())
    targets = [v.split(":")[1] for v in overlay["services"]["proxy"]["volumes"]]
    conf = (DEPLOY / "nginx" / "refgate.conf").read_text()
    include = re.search(r"^\s*include\s+(/etc/nginx/refgate/)\*\.conf;", conf, re.M)
    assert include is not None
    assert any(t.startswith(include.group(1)) and t.endswith(".conf") for t in targets)
    mtls = (DEPLOY / "nginx" / "mtls.conf").read_text()
    ca = re.search(r"ssl_client_certificate\s+(\S+);", mtls)
    assert ca is not None
    assert ca.group(1) in targets


# --- Dockerfile ------------------------------------------------------------


def dockerfile() -> list[str]:
    """Instructions of deploy/Dockerfile, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if i.strip()]


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    froms = [i for i in dockerfile() if i.upper().startswith("FROM ")]
    assert len(froms) >= 2
    assert " AS builder" in froms[0]
    assert any(i.startswith("COPY --from=builder") for i in dockerfile())
    base = next(i for i in dockerfile() if i.startswith("ARG PYTHON_IMAGE="))
    assert base.split("=", 1)[1].startswith("python:3.11-slim")


def test_dockerfile_runs_as_non_root_uid() -> None:
    final_stage = dockerfile()[
        max(n for n, i in enumerate(dockerfile()) if i.upper().startswith("FROM ")) :
    ]
    users = [i.split()[1] for i in final_stage if i.upper().startswith("USER ")]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) == GATEWAY_UID


def test_dockerfile_health_check_entrypoint_and_volume() -> None:
    instructions = dockerfile()
    (health,) = [i for i in instructions if i.startswith("HEALTHCHECK")]
    assert "/health/live" in health
    assert "urllib" in health
    assert "curl" not in health
    assert "wget" not in health
    assert 'ENTRYPOINT ["refgate-server"]' in instructions
    (cmd,) = [i for i in instructions if i.startswith("CMD ")]
    assert cmd.startswith('CMD ["serve"')
    assert 'VOLUME ["/var/lib/refgate"]' in instructions
    env = " ".join(i for i in instructions if i.startswith("ENV "))
    assert "PYTHONDONTWRITEBYTECODE=1" in env


def test_build_context_leaves_out_local_state_and_secrets() -> None:
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for pattern in (".git", ".venv", "tests", "**/.env", "**/*.key", "**/*.pem", "**/*.db"):
        assert pattern in ignored, pattern


# --- nginx ---------------------------------------------------------------


def nginx_conf() -> str:
    text = (DEPLOY / "nginx" / "refgate.conf").read_text()
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_nginx_speaks_tls_12_and_13_only_with_hsts() -> None:
    conf = nginx_conf()
    protocols = re.findall(r"ssl_protocols\s+([^;]+);", conf)
    assert protocols == ["TLSv1.2 TLSv1.3"]
    assert re.search(r'add_header\s+Strict-Transport-Security\s+"max-age=\d{8,}', conf)
    assert re.search(r"listen\s+\S+\s+ssl;", conf)
    assert not re.search(r"listen\s+(\[::\]:)?(80|8080)\b", conf), "plain-HTTP listener"


def test_nginx_forwards_client_address_and_scheme_and_bounds_requests() -> None:
    conf = nginx_conf()
    assert re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$remote_addr;", conf)
    assert re.search(r"proxy_set_header\s+X-Forwarded-Proto\s+\$scheme;", conf)
    assert re.search(r"client_max_body_size\s+1m;", conf)
    for directive in (
        "client_body_timeout",
        "client_header_timeout",
        "proxy_read_timeout",
        "proxy_connect_timeout",
        "send_timeout",
    ):
        assert re.search(rf"\b{directive}\s+\d+s;", conf), directive


def test_nginx_never_proxies_metrics() -> None:
    conf = nginx_conf()
    assert re.search(r"location\s+\^~\s+/metrics\s*\{\s*return\s+404;\s*\}", conf)
    locations = re.findall(r"location\s+([^{]+)\{([^}]*)\}", conf)
    for selector, body in locations:
        if "proxy_pass" in body:
            assert "metrics" not in selector


def test_mtls_policy_requires_verified_client_certificates() -> None:
    mtls = (DEPLOY / "nginx" / "mtls.conf").read_text()
    assert re.search(r"^ssl_verify_client\s+(on|optional);", mtls, re.M)
    assert re.search(r"if\s+\(\$ssl_client_verify\s+!=\s+SUCCESS\)", mtls)
    assert re.search(r"return\s+403;", mtls)


# --- PostgreSQL roles and grants (static; the live check runs elsewhere) -----


def test_roles_sql_takes_passwords_as_psql_variables() -> None:
    sql = sql_without_comments(DEPLOY / "postgres" / "roles.sql")
    assert ":'owner_password'" in sql
    assert ":'app_password'" in sql
    assert "ALTER DEFAULT PRIVILEGES FOR ROLE refgate_owner" in sql
    assert not re.search(r"PASSWORD\s+'", sql), "a literal password in roles.sql"
    assert re.search(r"ALTER ROLE refgate_app WITH [^;]*\bNOSUPERUSER\b", sql)


def test_grants_sql_leaves_the_app_insert_only_on_the_audit_log() -> None:
    sql = sql_without_comments(DEPLOY / "postgres" / "grants.sql")
    grants = re.findall(r"GRANT\s+([A-Z, ]+?)\s+ON\s+TABLE\s+([a-z_,\s]+?)\s+TO\s+refgate_app", sql)
    privileges: dict[str, set[str]] = {}
    for privs, tables in grants:
        for table in re.split(r"[,\s]+", tables.strip()):
            privileges.setdefault(table, set()).update(p.strip() for p in privs.split(","))
    for table in APPEND_ONLY:
        assert privileges[table] == {"SELECT", "INSERT"}, table
    # no DELETE on the queue: the sequencer dequeues through refgate_dequeue()
    assert privileges["audit_pending"] == {"SELECT", "INSERT"}
    assert "GRANT EXECUTE ON FUNCTION refgate_dequeue(bigint[]) TO refgate_app" in sql
    assert privileges["audit_tree_state"] == {"SELECT", "UPDATE"}
    assert "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM refgate_app" in sql
    assert sql.strip().startswith("\\set ON_ERROR_STOP on\n\nBEGIN;")
    assert sql.strip().endswith("COMMIT;")


def test_grants_sql_names_every_table_of_the_models() -> None:
    grants = (DEPLOY / "postgres" / "grants.sql").read_text()
    tables = set()
    for path in (ROOT / "app" / "models").rglob("*.py"):
        tables |= set(re.findall(r"__tablename__\s*=\s*[\"'](\w+)[\"']", path.read_text()))
    assert tables, "no models found"
    missing = {t for t in tables if not re.search(rf"\b{t}\b", grants)}
    assert not missing, f"add to deploy/postgres/grants.sql: {sorted(missing)}"


# --- systemd ---------------------------------------------------------------


def test_systemd_unit_serves_on_loopback_sandboxed() -> None:
    unit = (DEPLOY / "systemd" / "refgate.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    argv = shlex.split(settings["ExecStart"])
    assert argv[0].endswith("/refgate-server")
    assert argv[1] == "serve"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--workers" in argv
    assert settings["User"] == "refgate"
    for key, value in (
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
    ):
        assert settings[key] == value, key


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-grants-configmap"]:
        (K8S / "grants-sql.configmap.yaml").write_text(grants_configmap_text())
    else:
        sys.exit(f"usage: {sys.argv[0]} --write-grants-configmap")
