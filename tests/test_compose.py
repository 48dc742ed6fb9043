"""The docker compose deployment, the image it builds and the Helm values, checked by reading them.

No Docker engine is needed: the files are read as compose, Docker and Helm would read them.
What a team relies on: every variable compose interpolates is documented in `.env.example`
and compose refuses to start without a secret; every service waits for healthy
dependencies; workers scale; images are pinned; the paths the image copies exist; no secret
is committed; the image carries the Airflow version the project is tested with.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
HELM_VALUES = REPO / "deploy" / "helm" / "values.yaml"

AIRFLOW_COMPONENTS = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
# Settings that hold a secret: required ones, and connection URLs (optional, may embed one).
REQUIRED_SECRET = re.compile(r"(PASSWORD|SECRET|_KEY|BASIC_AUTH)$")
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|_KEY|BASIC_AUTH)$|^AIRFLOW_CONN_|_URL$")
# `${NAME}`, `${NAME:-default}`, `${NAME:?error}`; `$$` is a literal dollar sign.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
# A release, not a moving major (`postgres:16`) or `latest`: `postgres:16.4`, `mailpit:v1.31.2`.
EXACT_TAG = re.compile(r"^[\w./-]+:v?\d+(\.\d+)+(-[\w.]+)?$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=value: {line!r}"
            values[key] = value
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ``${X}``, ``${X:-default}`` (nested), ``${X:?error}``, ``$$``."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                if text.startswith("${", j):
                    depth, j = depth + 1, j + 2
                    continue
                depth -= text[j] == "}"
                j += 1
            body = text[i + 2 : j - 1]
            name, op, rest = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:[-?])?(.*)", body, re.S).groups()
            value = env.get(name, "")
            if op == ":-" and not value:
                value = interpolate(rest, env)
            elif op == ":?" and not value:
                raise ValueError(f"required variable {name} is missing a value: {rest}")
            out.append(value)
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _filled_env() -> dict[str, str]:
    """`.env.example` with every empty secret filled, as a team fills its `.env`."""
    return {k: v or (secrets.token_urlsafe(18) if REQUIRED_SECRET.search(k) else "") for k, v in _env_example().items()}


def _common_env(env: dict[str, str]) -> dict[str, str]:
    rendered = yaml.safe_load(interpolate(COMPOSE.read_text(), env))
    return rendered["services"]["airflow-worker"]["environment"]


def test_every_variable_compose_reads_is_in_env_example_and_every_entry_is_used():
    used = set(VARIABLE.findall(COMPOSE.read_text()))
    documented = set(_env_example())
    assert used - documented == set(), "add these to .env.example"
    assert documented - used == set(), "not read by docker-compose.yml"


def test_no_secret_value_is_committed():
    committed = {k: v for k, v in _env_example().items() if SECRET_NAME.search(k) and v}
    assert committed == {}, "secrets belong in .env only"
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()
    # In the compose file itself, every secret-looking setting is a reference to .env.
    for text in re.findall(r"^\s*([A-Z0-9_]+):\s*(.+)$", COMPOSE.read_text(), re.M):
        key, value = text
        if REQUIRED_SECRET.search(key):
            assert value.strip().startswith("${"), f"{key} has a literal value in docker-compose.yml"
    passwords_in_urls = re.findall(r"://[^:/@\s]+:([^@\s]+)@", COMPOSE.read_text())
    assert all(p.startswith("${") for p in passwords_in_urls), passwords_in_urls


def test_compose_refuses_to_start_without_a_secret():
    with pytest.raises(ValueError, match="AIRFLOW_FERNET_KEY"):
        env = {**_filled_env(), "AIRFLOW_FERNET_KEY": ""}
        interpolate(COMPOSE.read_text(), env)
    interpolate(COMPOSE.read_text(), _filled_env())


def test_the_pipeline_connections_default_to_the_bundled_services():
    env = _filled_env()
    common = _common_env(env)
    from serviceloop.settings import HELPDESK_CONN_ID, WAREHOUSE_CONN_ID

    warehouse = urlsplit(common[f"AIRFLOW_CONN_{WAREHOUSE_CONN_ID.upper()}"])
    assert (warehouse.hostname, warehouse.port, warehouse.path) == ("warehouse-postgres", 5432, "/serviceloop")
    assert (warehouse.username, warehouse.password) == (env["WAREHOUSE_USER"], env["WAREHOUSE_PASSWORD"])
    helpdesk = urlsplit(common[f"AIRFLOW_CONN_{HELPDESK_CONN_ID.upper()}"])
    assert (helpdesk.hostname, helpdesk.path) == ("warehouse-postgres", "/helpdesk")
    assert urlsplit(common["SERVICELOOP_WAREHOUSE_URL"]).hostname == "warehouse-postgres"
    metadata = urlsplit(common["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert (metadata.hostname, metadata.password) == ("airflow-postgres", env["AIRFLOW_DB_PASSWORD"])
    assert common["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert urlsplit(common["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"
    assert urlsplit(common["AIRFLOW_CONN_SERVICELOOP_SMTP"]).hostname == "mailpit"

    # A managed warehouse set in .env replaces the default.
    managed = "postgres://sl:pw@pg.example.net:5432/serviceloop?sslmode=require"
    common = _common_env({**env, f"AIRFLOW_CONN_{WAREHOUSE_CONN_ID.upper()}": managed})
    assert common[f"AIRFLOW_CONN_{WAREHOUSE_CONN_ID.upper()}"] == managed


def test_the_official_airflow_layout_is_there(services):
    assert set(services) >= AIRFLOW_COMPONENTS
    assert {"airflow-postgres", "warehouse-postgres", "redis", "mailpit", "flower"} <= set(services)
    assert services["flower"]["profiles"] == ["flower"]
    commands = {name: services[name].get("command") for name in AIRFLOW_COMPONENTS - {"airflow-init"}}
    assert commands == {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
        "airflow-worker": "celery worker",
    }
    init = "\n".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in init and "passwords.json" in init
    # Nothing starts before the metadata database is migrated.
    for name in AIRFLOW_COMPONENTS - {"airflow-init"}:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"


def test_every_service_is_healthchecked_or_waits_for_a_healthy_one(services):
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for dep, cond in depends.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no healthcheck"
        healthy = [d for d, c in depends.items() if c["condition"] == "service_healthy"]
        assert "healthcheck" in service or healthy, f"{name}: no healthcheck and no healthy dependency"


def test_workers_scale(services):
    worker = services["airflow-worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "hostname" not in worker


def test_images_are_pinned(services):
    for name, service in services.items():
        if "build" in service:
            continue
        assert EXACT_TAG.match(service["image"]), f"{name}: image {service['image']!r} is not pinned to a version"


def _dockerfile() -> tuple[str, dict[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    return text, args


def test_the_image_is_the_pinned_airflow_release_the_project_is_tested_with():
    import airflow

    text, args = _dockerfile()
    (base,) = re.findall(r"^FROM (\S+)", text, re.M)
    base = base.replace("${AIRFLOW_VERSION}", args["AIRFLOW_VERSION"])
    assert base == f"apache/airflow:{airflow.__version__}-python3.11"
    install = re.search(r"^RUN pip install .*$", text, re.M).group(0)
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in install, "pip must not move Airflow off the image's version"
    assert "/opt/serviceloop/src" in install


def test_what_the_image_copies_exists_and_is_where_settings_look(services):
    text, _ = _dockerfile()
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()}
    copies = re.findall(r"^COPY (?:--\S+ )*(.+) (\S+)$", text, re.M)
    assert copies
    copied: dict[str, str] = {}
    for sources, dest in copies:
        for src in sources.split():
            assert (REPO / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
            assert src.rstrip("/") not in ignored, f"{src} is excluded by .dockerignore"
            copied[src.rstrip("/")] = dest.rstrip("/")
    assert {"plugins", "dags", "dbt_project", "expectations"} <= set(copied)
    env = dict(re.findall(r"(SERVICELOOP_\w+_DIR)=(\S+)", text))
    assert env["SERVICELOOP_DAGS_DIR"] == copied["dags"]
    assert env["SERVICELOOP_DBT_PROJECT_DIR"] == copied["dbt_project"]
    assert env["SERVICELOOP_EXPECTATIONS_DIR"] == copied["expectations"]
    assert (REPO / "expectations" / "tickets.yml").exists() and (REPO / "dbt_project" / "dbt_project.yml").exists()
    # Bind mounts in compose, if any, are of paths in the repository.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"


def test_helm_values_use_the_same_image_and_keep_secrets_in_kubernetes_secrets():
    import airflow

    values = yaml.safe_load(HELM_VALUES.read_text())
    assert values["executor"] == "CeleryExecutor"
    assert values["airflowVersion"] == airflow.__version__
    assert re.match(r"^\d+\.\d+\.\d+$", str(values["defaultAirflowTag"]))
    env = {e["name"]: e["value"] for e in values["env"]}
    text, _ = _dockerfile()
    assert env["SERVICELOOP_HOME"] == re.search(r"SERVICELOOP_HOME=(\S+)", text).group(1)
    secret_envs = {s["envName"] for s in values["secret"]}
    assert {"AIRFLOW_CONN_SERVICELOOP_WAREHOUSE", "AIRFLOW_CONN_SERVICELOOP_HELPDESK"} <= secret_envs
    assert not any(SECRET_NAME.search(name) for name in env), "secrets go through `secret:`, not `env:`"

    def walk(node, path=""):
        if isinstance(node, dict):
            for key, value in node.items():
                if re.fullmatch(r"password|fernetKey|apiSecretKey|jwtSecret|webserverSecretKey|connection", str(key)):
                    assert value in ("", None), f"{path}.{key} holds a secret; use its *SecretName"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for item in node:
                walk(item, path)

    walk(values)


def test_every_deployment_runs_the_transform_with_the_same_cosmos_settings(services):
    """`make run`/`make up`, compose and Helm run the watcher-mode transform alike."""
    from serviceloop.transform import COSMOS_SETTINGS

    helm_env = {e["name"]: e["value"] for e in yaml.safe_load(HELM_VALUES.read_text())["env"]}
    for component in AIRFLOW_COMPONENTS:
        env = services[component]["environment"]
        for key, value in COSMOS_SETTINGS.items():
            assert str(env.get(key)) == value, f"{component}: {key}"
    for key, value in COSMOS_SETTINGS.items():
        assert helm_env.get(key) == value, f"Helm values: {key}"
