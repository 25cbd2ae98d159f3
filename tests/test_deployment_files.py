"""The Dockerfile, compose.yaml and the Kubernetes manifests agree with the code: the port, the probe
paths, the settings they name, the entry point and the drain time. (No container engine runs here,
so they are parsed and checked, not started.)"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from pydantic import AliasChoices

from bot.adapters.metrics import PrometheusMetrics
from bot.core.policy_file import parse_policy
from bot.runtime.config import Settings
from handlers.ops import HEALTHZ, LIVENESS, READINESS, HealthCheck, mount_ops
from storage import open_store

REPO = Path(__file__).resolve().parents[1]
KUBERNETES = REPO / "manifests" / "kubernetes"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
CONSOLE_SCRIPT = next(iter(PYPROJECT["project"]["scripts"]))
DEFAULT_PORT = Settings.model_fields["port"].default
DEFAULT_DRAIN = Settings.model_fields["drain_seconds"].default


def _setting_names() -> set[str]:
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
    return names


SETTINGS = _setting_names()


def _routes() -> set[str]:
    """The GET paths the operations endpoints mount (tests/test_e2e_slack.py calls them on the real app)."""
    app = web.Application()
    mount_ops(app, health=HealthCheck(store=None, probes={}), metrics=PrometheusMetrics(), store=None)  # type: ignore[arg-type]
    return {r.resource.canonical for r in app.router.routes() if r.method == "GET" and r.resource is not None}


ROUTES = _routes()


# --- Dockerfile ----------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def _last_stage() -> list[tuple[str, str]]:
    steps = _dockerfile()
    start = max(i for i, (ins, _) in enumerate(steps) if ins == "FROM")
    return steps[start:]


def _env(args: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(args))


def test_the_image_is_a_slim_python_matching_requires_python() -> None:
    bases = [args.split()[0] for ins, args in _dockerfile() if ins == "FROM"]
    assert bases and all(re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base) for base in bases), bases
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"


def test_the_image_runs_as_a_non_root_user() -> None:
    users = [args for ins, args in _last_stage() if ins == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert f"--uid {user}" in " ".join(args for ins, args in _last_stage() if ins == "RUN")


def test_the_entry_point_is_the_console_script_serving() -> None:
    steps = dict(_last_stage())
    assert json.loads(steps["ENTRYPOINT"]) == [CONSOLE_SCRIPT]
    assert json.loads(steps["CMD"]) == ["serve"]
    assert steps["STOPSIGNAL"] == "SIGTERM"


def test_the_image_exposes_the_default_port_and_names_only_real_settings() -> None:
    steps = _last_stage()
    env: dict[str, str] = {}
    for ins, args in steps:
        if ins == "ENV":
            env.update(_env(args))
    ackgate = {k for k in env if k.startswith(("ACKGATE_", "SLACK_", "PAGERDUTY_"))}
    assert ackgate <= SETTINGS, ackgate - SETTINGS
    assert env["ACKGATE_PORT"] == str(DEFAULT_PORT)
    assert [args for ins, args in steps if ins == "EXPOSE"] == [str(DEFAULT_PORT)]
    open_store(env["ACKGATE_DATABASE_URL"])  # a URL Ackgate accepts
    assert env["ACKGATE_POLICY_FILE"] in " ".join(args for ins, args in steps if ins == "COPY")


def test_the_health_check_asks_the_liveness_endpoint() -> None:
    checks = [args for ins, args in _last_stage() if ins == "HEALTHCHECK"]
    assert len(checks) == 1
    assert f"{LIVENESS}'" in checks[0] and LIVENESS in ROUTES
    assert "ACKGATE_PORT" in checks[0]
    command = json.loads(checks[0].split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    compile(command[2], "HEALTHCHECK", "exec")  # the one-liner is Python that parses


def test_what_the_image_copies_exists_and_the_build_context_keeps_it() -> None:
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".git", ".venv", "tests"} <= set(ignored)
    for ins, args in _dockerfile():
        if ins == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), source
                assert source.split("/")[0] not in ignored, source


# --- compose.yaml --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))
    return loaded


def _substituted(value: str) -> str:
    """``${NAME:?…}`` / ``${NAME:-…}`` filled with a stand-in, as compose would with NAME set."""
    return re.sub(r"\$\{(\w+)[^}]*\}", lambda m: f"stand-in-{m.group(1).lower()}", value)


def test_compose_runs_two_ackgate_replicas_on_postgresql_behind_one_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "ackgate", "proxy"}
    ackgate = services["ackgate"]
    assert ackgate["deploy"]["replicas"] == 2
    assert ackgate["build"] == "."
    assert ackgate["command"] == ["serve"]
    assert "ports" not in ackgate  # reached only through the proxy
    assert [p.split(":")[-1] for p in services["proxy"]["ports"]] == [str(DEFAULT_PORT)]
    assert ackgate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["proxy"]["depends_on"]["ackgate"]["condition"] == "service_healthy"
    url = _substituted(ackgate["environment"]["ACKGATE_DATABASE_URL"])
    assert url.startswith("postgresql://") and url.endswith("@postgres:5432/ackgate")
    open_store(url)
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "ackgate"


def test_compose_names_only_real_settings_and_the_port_matches(compose: dict[str, Any]) -> None:
    env = compose["services"]["ackgate"]["environment"]
    assert set(env) <= SETTINGS, set(env) - SETTINGS
    assert env["ACKGATE_PORT"] == str(DEFAULT_PORT)
    assert float(env["ACKGATE_DRAIN_SECONDS"]) < _seconds(compose["services"]["ackgate"]["stop_grace_period"])
    assert env["ACKGATE_POLICY_FILE"] == "/etc/ackgate/policy.yaml"
    assert any(v.endswith(":/etc/ackgate/policy.yaml:ro") for v in compose["services"]["ackgate"]["volumes"])


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match.group(1))


def test_compose_health_check_asks_readiness_on_the_port(compose: dict[str, Any]) -> None:
    test = compose["services"]["ackgate"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert f"127.0.0.1:{DEFAULT_PORT}{READINESS}'" in test[3] and READINESS in ROUTES
    compile(test[3], "healthcheck", "exec")


def test_the_proxy_forwards_to_every_replica_on_the_port_with_nginx_variables_escaped(
    compose: dict[str, Any],
) -> None:
    conf = compose["configs"]["nginx"]["content"]
    assert f"listen {DEFAULT_PORT};" in conf
    assert f"http://ackgate:{DEFAULT_PORT}" in conf
    # compose substitutes $name itself; nginx's own variables must be written $$name
    assert not re.search(r"(?<!\$)\$(?!\$)\w", conf), conf
    assert compose["services"]["proxy"]["configs"][0]["source"] == "nginx"


# --- Kubernetes ----------------------------------------------------------------------------------


def _manifests() -> dict[str, dict[str, Any]]:
    by_kind: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            by_kind[doc["kind"]] = doc
    return by_kind


MANIFESTS = _manifests()


def _container() -> dict[str, Any]:
    containers = MANIFESTS["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _container_env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container()["env"]}


def test_the_manifests_are_a_deployment_service_secret_configmap_and_kustomization() -> None:
    assert set(MANIFESTS) == {"Deployment", "Service", "Secret", "ConfigMap", "Kustomization"}
    listed = set(MANIFESTS["Kustomization"]["resources"])
    assert listed == {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}


def test_the_deployment_probes_liveness_and_readiness_on_real_routes() -> None:
    container = _container()
    assert container["livenessProbe"]["httpGet"]["path"] == LIVENESS
    assert container["readinessProbe"]["httpGet"]["path"] == READINESS
    assert container["startupProbe"]["httpGet"]["path"] == LIVENESS
    assert {LIVENESS, READINESS, HEALTHZ} <= ROUTES
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "http"


def test_the_deployment_listens_where_the_service_sends() -> None:
    container = _container()
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert port["containerPort"] == int(_container_env().get("ACKGATE_PORT", DEFAULT_PORT)) == DEFAULT_PORT
    service = MANIFESTS["Service"]["spec"]
    assert service["ports"][0]["targetPort"] == "http"
    labels = MANIFESTS["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()


def test_the_deployment_asks_for_resources_runs_as_the_image_user_and_drains_in_its_grace() -> None:
    spec = MANIFESTS["Deployment"]["spec"]
    assert spec["replicas"] >= 2
    assert set(_container()["resources"]["requests"]) == {"cpu", "memory"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    image_user = next(args for ins, args in reversed(_last_stage()) if ins == "USER").split(":")[0]
    assert str(pod["securityContext"]["runAsUser"]) == image_user
    drain = float(_container_env().get("ACKGATE_DRAIN_SECONDS", DEFAULT_DRAIN))
    pre_stop = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert float(pre_stop[1]) + drain < pod["terminationGracePeriodSeconds"]  # the grace covers both
    assert _container().get("args") == ["serve"]
    assert "command" not in _container()  # the image's entry point, the console script


def test_the_deployment_and_secret_name_only_real_settings_and_the_secret_holds_the_secrets() -> None:
    env = _container_env()
    assert set(env) <= SETTINGS, set(env) - SETTINGS
    secret = MANIFESTS["Secret"]["stringData"]
    assert set(secret) <= SETTINGS, set(secret) - SETTINGS
    secrets = {name for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)}
    secret_settings = {str(Settings.model_fields[n].validation_alias) for n in secrets}
    assert not set(env) & secret_settings, "a secret is in plain env; put it in the Secret"
    assert {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "PAGERDUTY_API_TOKEN", "ACKGATE_SECRET_KEY"} <= set(secret)
    refs = [source["secretRef"]["name"] for source in _container()["envFrom"]]
    assert refs == [MANIFESTS["Secret"]["metadata"]["name"]]
    open_store(secret["ACKGATE_DATABASE_URL"])
    assert secret["ACKGATE_DATABASE_URL"].startswith("postgresql://")  # replicas need PostgreSQL


def test_the_policy_comes_from_the_configmap_and_is_valid() -> None:
    config = MANIFESTS["ConfigMap"]
    pod = MANIFESTS["Deployment"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == config["metadata"]["name"]
    mount = next(m for m in _container()["volumeMounts"] if m["name"] == volume["name"])
    policy_path = Path(_container_env()["ACKGATE_POLICY_FILE"])
    assert str(policy_path.parent) == mount["mountPath"]
    parse_policy(config["data"][policy_path.name], source="configmap.yaml")


def test_the_readme_documents_the_probes_and_healthz_as_the_readiness_alias() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"`GET {LIVENESS}` (liveness)" in readme
    assert f"`GET {READINESS}` (readiness, also at `GET {HEALTHZ}`)" in readme
    assert "## Running it for real" in readme
    for path in ("Dockerfile", "compose.yaml", "manifests/kubernetes/"):
        assert f"`{path}`" in readme, path
