"""The deployment artefacts validate with the tools an operator would use, and say what matters.

- deploy/compose.yaml through `docker-compose config` (Debian's docker-compose, installed by `make test`'s
  `docker-compose` target; no Docker daemon needed): the file parses, interpolates and resolves, and the resolved
  configuration has every role, non-root read-only AIOS containers, secrets only as *_FILE files, a health check
  on every long-running service and the model-server profiles.
- deploy/helm/aios rendered with Helm's own engine (helm-python-sdk, Helm's Go library) with the default values
  and with every option on, each document validated against the Kubernetes schemas (kubernetes-validate, strict,
  bundled schemas), and the render failing with a clear message when a required value is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
CHART = DEPLOY / "helm" / "aios"
ALL_OPTIONS = Path(__file__).parent / "data" / "helm-values-all.yaml"
KUBERNETES_VERSION = "1.33.0"

# Every secret setting: never inline, always NAME_FILE naming a mounted file.
SECRET_SETTINGS = (
    "DJANGO_SECRET_KEY",
    "AIOS_CREDENTIALS_KEY",
    "AIOS_AUDIT_SIGNING_KEY",
    "DATABASE_URL",
    "DATABASE_OWNER_URL",
    "REDIS_URL",
    "EMAIL_URL",
    "AIOS_METRICS_TOKEN",
)
QUEUES = ("engine", "inference", "connectors", "default")
AIOS_SERVICES = ("migrate", "web", "websocket", "beat", *(f"worker-{queue}" for queue in QUEUES))


# --- compose -------------------------------------------------------------------------------------------------


def _docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.fail("docker-compose is not installed: `make test` installs it (Debian package docker-compose).")
    return path


@pytest.fixture(scope="module")
def compose_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The variables an operator sets (deploy/.env), with secrets written by deploy/make-secrets.sh."""
    secrets_dir = tmp_path_factory.mktemp("compose-secrets") / "secrets"
    subprocess.run([str(DEPLOY / "make-secrets.sh"), str(secrets_dir)], check=True, capture_output=True)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(secrets_dir.parent),
        "AIOS_HOST": "aios.example.com",
        "SMTP_ALLOWED_SENDER_DOMAINS": "example.com",
        "AIOS_SECRETS_DIR": str(secrets_dir),
    }


def compose_config(env: dict[str, str], *args: str, path: Path = COMPOSE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_docker_compose(), "--project-directory", str(path.parent), "-f", str(path), *args, "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def resolved(compose_env: dict[str, str]) -> dict[str, Any]:
    """`docker-compose config` with every profile on: the configuration compose would run."""
    result = compose_config(compose_env, "--profile", "tgi", "--profile", "vllm", "--profile", "tei")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_compose_config_validates_with_and_without_profiles(compose_env: dict[str, str]) -> None:
    for profiles in ([], ["--profile", "tgi"], ["--profile", "vllm"], ["--profile", "tei"]):
        result = compose_config(compose_env, *profiles)
        assert result.returncode == 0, (profiles, result.stderr)


def test_compose_has_every_role_and_service(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    expected = {*AIOS_SERVICES, "proxy", "postgres", "pgbouncer", "redis", "smtp", "tgi", "vllm", "tei"}
    assert expected <= set(services), expected - set(services)
    commands = {name: services[name]["command"] for name in AIOS_SERVICES}
    assert commands["migrate"] == ["migrate"]
    assert commands["web"] == ["web"] and commands["websocket"] == ["websocket"]
    assert commands["beat"] == ["beat"]
    assert {tuple(commands[f"worker-{queue}"]) for queue in QUEUES} == {("worker", queue) for queue in QUEUES}
    # Model servers are opt-in profiles; the GPU ones reserve a GPU.
    for name in ("tgi", "vllm", "tei"):
        assert services[name]["profiles"] == [name]
    for name in ("tgi", "vllm"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in device["capabilities"] for device in devices)
    assert "pgvector" in services["postgres"]["image"]


def test_compose_aios_services_are_production_non_root_and_read_only(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in AIOS_SERVICES:
        service = services[name]
        assert service["user"] == "10001:10001", name
        assert service["read_only"] is True, name
        assert service["environment"]["AIOS_ENV"] == "production", name
        assert service["environment"]["DJANGO_ALLOWED_HOSTS"] == "aios.example.com", name
    # Only the proxy's fixed address may claim a client's address.
    proxy_address = services["proxy"]["networks"]["aios"]["ipv4_address"]
    assert services["web"]["environment"]["FORWARDED_ALLOW_IPS"] == proxy_address
    # Everything waits for the migration to have finished successfully.
    for name in AIOS_SERVICES:
        if name != "migrate":
            assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


def test_compose_secrets_are_files_never_values(resolved: dict[str, Any], compose_env: dict[str, str]) -> None:
    services = resolved["services"]
    declared = resolved["secrets"]
    for name in AIOS_SERVICES:
        environment = services[name]["environment"]
        mounted = {entry["source"] if isinstance(entry, dict) else entry for entry in services[name]["secrets"]}
        for setting in SECRET_SETTINGS:
            assert setting not in environment, (name, setting)
            path = environment[f"{setting}_FILE"]
            secret = path.removeprefix("/run/secrets/")
            assert path.startswith("/run/secrets/") and secret in mounted and secret in declared, (name, setting)
    # No secret's value appears anywhere in the resolved configuration.
    text = yaml.safe_dump(resolved)
    for path in Path(compose_env["AIOS_SECRETS_DIR"]).iterdir():
        value = path.read_text().strip()
        if path.name != "email_url":  # the relay's address, not a secret
            assert value not in text, path.name


def test_compose_health_checks_and_stateful_services(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    # The migrate job runs once and exits; every other service says when it is healthy.
    missing = [name for name, service in services.items() if name != "migrate" and "healthcheck" not in service]
    assert missing == []
    assert services["web"]["healthcheck"]["test"][-2:] == ["probe", "readyz"]
    for queue in QUEUES:
        assert "worker-health" in services[f"worker-{queue}"]["healthcheck"]["test"]
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command and "requirepass" in redis_command
    pgbouncer_ini = (DEPLOY / "compose" / "pgbouncer.ini").read_text()
    assert re.search(r"^pool_mode = transaction$", pgbouncer_ini, re.MULTILINE)
    assert "pgbouncer:6432" in (Path(resolved["secrets"]["database_url"]["file"])).read_text()
    assert "postgres:5432" in (Path(resolved["secrets"]["database_owner_url"]["file"])).read_text()


def test_compose_config_refuses_a_broken_file_and_a_missing_host(compose_env: dict[str, str], tmp_path: Path) -> None:
    without_host = {key: value for key, value in compose_env.items() if key != "AIOS_HOST"}
    result = compose_config(without_host)
    assert result.returncode != 0
    assert "set AIOS_HOST" in result.stderr
    # A misspelt key in a copy of the file: the schema check names it.
    broken_dir = tmp_path / "deploy"
    shutil.copytree(DEPLOY / "compose", broken_dir / "compose")
    text = COMPOSE.read_text().replace("    healthcheck: *worker-health\n", "    healthchek: *worker-health\n", 1)
    assert "healthchek" in text
    (broken_dir / "compose.yaml").write_text(text)
    result = compose_config(compose_env, path=broken_dir / "compose.yaml")
    assert result.returncode != 0
    assert "healthchek" in result.stderr


# --- Helm chart ----------------------------------------------------------------------------------------------

REQUIRED_VALUES = {"host": "aios.example.com", "existingSecret": "aios-secrets"}


def render(values: dict[str, Any], chart: Path = CHART) -> list[dict[str, Any]]:
    import helm_python as helm

    rendered = helm.Chart.load(str(chart)).render(values, name="aios", namespace="aios", is_install=True)
    documents = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        documents += [document for document in yaml.safe_load_all(text) if document]
    return documents


def validate(documents: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def all_options() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(ALL_OPTIONS.read_text())
    return values


@pytest.mark.parametrize("values", [REQUIRED_VALUES, all_options()], ids=["defaults", "every-option"])
def test_chart_renders_and_validates_against_kubernetes_schemas(values: dict[str, Any]) -> None:
    import helm_python as helm

    documents = render(values)
    validate(documents)
    lint = helm.lint(str(CHART), values, strict=True)
    # Helm severities: 1 info (e.g. "icon is recommended"), 2 warning, 4 error.
    assert not lint["errors"] and not [m for m in lint["messages"] if m["severity"] >= 2], lint
    deployments = by_kind(documents, "Deployment")
    expected = {"aios-web", "aios-websocket", "aios-beat", *(f"aios-worker-{queue}" for queue in QUEUES)}
    assert expected <= set(deployments)
    if values is not REQUIRED_VALUES:
        assert by_kind(documents, "Ingress") and by_kind(documents, "NetworkPolicy")


def test_chart_pods_are_non_root_read_only_with_probes_resources_and_file_secrets() -> None:
    documents = render(all_options())
    pods = {name: d["spec"]["template"]["spec"] for name, d in by_kind(documents, "Deployment").items()}
    pods |= {name: d["spec"]["template"]["spec"] for name, d in by_kind(documents, "Job").items()}
    pods |= {
        name: d["spec"]["jobTemplate"]["spec"]["template"]["spec"] for name, d in by_kind(documents, "CronJob").items()
    }
    assert len(pods) == 9
    for name, pod in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0, name
        assert pod["automountServiceAccountToken"] is False, name
        secret_volume = next(v for v in pod["volumes"] if v["name"] == "secrets")
        assert secret_volume["secret"]["secretName"] == "aios-secrets", name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["requests"] and container["resources"]["limits"], name
            env = {e["name"]: e for e in container["env"]}
            assert env["AIOS_ENV"]["value"] == "production"
            for setting in SECRET_SETTINGS:
                assert setting not in env, (name, setting)
                assert env[f"{setting}_FILE"]["value"] == f"/run/secrets/aios/{setting}", (name, setting)
            if "Job" not in name and not name.endswith(("migrate", "purge-runs")):
                assert "livenessProbe" in container, name
    for role in ("aios-web", "aios-websocket"):
        container = pods[role]["containers"][0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert {"name": "Host", "value": "aios.example.com"} in container["readinessProbe"]["httpGet"]["httpHeaders"]
    for queue in QUEUES:
        container = pods[f"aios-worker-{queue}"]["containers"][0]
        assert container["args"] == ["worker", queue]
        assert container["livenessProbe"]["exec"]["command"][-1] == "worker-health"


def test_chart_beat_migration_job_autoscalers_and_ingress() -> None:
    documents = render(all_options())
    beat = by_kind(documents, "Deployment")["aios-beat"]
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    job = by_kind(documents, "Job")["aios-migrate"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    # The retention purge, when enabled: purge-runs as the owner role, on its schedule, never two at once.
    purge = by_kind(documents, "CronJob")["aios-purge-runs"]
    assert purge["spec"]["schedule"] == "30 2 * * *" and purge["spec"]["concurrencyPolicy"] == "Forbid"
    container = purge["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["purge-runs", "--older-than", "180", "--batch-size", "250"]
    assert {"name": "DATABASE_OWNER_URL_FILE", "value": "/run/secrets/aios/DATABASE_OWNER_URL"} in container["env"]
    # The HPAs scale each queue's workers on the queue depth /metrics exports (apps/runs/metrics.py).
    metrics_source = (REPO / "apps" / "runs" / "metrics.py").read_text()
    autoscalers = by_kind(documents, "HorizontalPodAutoscaler")
    assert set(autoscalers) == {f"aios-worker-{queue}" for queue in QUEUES}
    for queue in QUEUES:
        spec = autoscalers[f"aios-worker-{queue}"]["spec"]
        assert spec["scaleTargetRef"]["name"] == f"aios-worker-{queue}"
        (metric,) = spec["metrics"]
        assert metric["type"] == "External"
        name = metric["external"]["metric"]["name"]
        assert re.search(rf'GaugeMetricFamily\(\s*"{name}",[^)]*labels=\["queue"', metrics_source), name
        assert metric["external"]["metric"]["selector"]["matchLabels"] == {"queue": queue}
    # An autoscaled Deployment leaves its replica count to the HPA.
    assert "replicas" not in by_kind(documents, "Deployment")["aios-worker-engine"]["spec"]
    ingress = by_kind(documents, "Ingress")["aios"]
    paths = {p["path"]: p["backend"]["service"]["name"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert paths == {"/ws/": "aios-websocket", "/": "aios-web"}


def test_chart_defaults_have_no_autoscaler_ingress_or_policy() -> None:
    documents = render(REQUIRED_VALUES)
    kinds = {d["kind"] for d in documents}
    assert not kinds & {"HorizontalPodAutoscaler", "Ingress", "NetworkPolicy", "CronJob"}
    assert by_kind(documents, "Deployment")["aios-worker-engine"]["spec"]["replicas"] == 2


@pytest.mark.parametrize("missing", ["host", "existingSecret"])
def test_chart_render_fails_clearly_without_a_required_value(missing: str) -> None:
    import helm_python as helm

    values = {key: value for key, value in REQUIRED_VALUES.items() if key != missing}
    with pytest.raises(helm.HelmRenderError, match=f"{missing} is required"):
        render(values)


def test_schema_validation_catches_a_broken_template(tmp_path: Path) -> None:
    """The validation is strict: a misspelt field in a copy of the chart fails it (so the passes above mean
    something)."""
    import kubernetes_validate

    chart = tmp_path / "aios"
    shutil.copytree(CHART, chart)
    template = chart / "templates" / "beat.yaml"
    template.write_text(template.read_text().replace("strategy:", "stratgy:", 1))
    with pytest.raises(kubernetes_validate.ValidationError, match="stratgy"):
        validate(render(REQUIRED_VALUES, chart=chart))
