"""deploy/: the Compose file and the Kubernetes manifests validate against their schemas, offline, and every
CHATSVC_* variable they and the Containerfile set is a setting chatsvc reads, documented, with a valid value."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from chatsvc.config import ENVIRONMENT, Config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose.yaml"
KUBERNETES = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
CONTAINERFILE = ROOT / "Containerfile"
CONFIGURATION_DOC = ROOT / "docs" / "configuration.md"
# Settings the manifests use that another branch adds: PostgreSQL support (issue 14) reads CHATSVC_DATABASE_URL.
# Once config.py has it, this entry is redundant and can go.
ON_ANOTHER_BRANCH = {"CHATSVC_DATABASE_URL"}
# The oldest Kubernetes release the manifests are for, and the newest whose schemas the validator ships.
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())


def kubernetes_documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}: {document['kind']} {document['metadata']['name']}", document)
        for path in KUBERNETES
        for document in yaml.safe_load_all(path.read_text())
    ]


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def chatsvc_containers() -> list[tuple[str, dict[str, Any]]]:
    """Every container of the Kubernetes manifests that runs the chatsvc image."""
    return [
        (f"{where} container {container['name']}", container)
        for where, document in kubernetes_documents()
        if document["kind"] == "Deployment"
        for container in document["spec"]["template"]["spec"]["containers"]
        if container["image"].split(":")[0].endswith("chatsvc")
    ]


def literal(value: Any) -> str | None:
    """A variable's value when the file gives it as text, not from the host (${...}) or a Secret."""
    return value if isinstance(value, str) and "${" not in value else None


def settings_used() -> list[tuple[str, str, str | None]]:
    """(where, variable, literal value or None) for every CHATSVC_* variable that deploy/ and the Containerfile set."""
    used: list[tuple[str, str, str | None]] = []
    for name, service in compose_services().items():
        if service["image"].startswith("${CHATSVC_IMAGE"):
            environment = service.get("environment", {})
            used += [(f"compose.yaml service {name}", key, literal(value)) for key, value in environment.items()]
    for where, container in chatsvc_containers():
        used += [(where, entry["name"], literal(entry.get("value"))) for entry in container.get("env", [])]
    env_lines = re.findall(r"(CHATSVC_[A-Z_]+)=(\S+)", CONTAINERFILE.read_text())
    used += [("Containerfile", name, value) for name, value in env_lines]
    return used


def test_deploy_manifests_set_only_documented_settings_with_valid_values() -> None:
    used = settings_used()
    assert {name for _, name, _ in used} >= {"CHATSVC_DB", "CHATSVC_API_KEY", "CHATSVC_REDIS_URL", "CHATSVC_HOST"}
    documented = set(re.findall(r"`(CHATSVC_[A-Z_]+)`", CONFIGURATION_DOC.read_text()))
    unknown = [(where, name) for where, name, _ in used if name not in ENVIRONMENT and name not in ON_ANOTHER_BRANCH]
    assert unknown == [], "not a setting in chatsvc/config.py's ENVIRONMENT"
    undocumented = [(where, name) for where, name, _ in used if name not in documented | ON_ANOTHER_BRANCH]
    assert undocumented == [], "not in docs/configuration.md"
    for where, name, value in used:
        if value is not None and name in ENVIRONMENT:
            # The same parsing chatsvc does at start: a bad value would stop the container with status 2.
            try:
                Config.from_env({name: value})
            except ValueError as exc:
                pytest.fail(f"{where}: {exc}")


def test_deploy_kubernetes_manifests_validate_against_the_kubernetes_schemas() -> None:
    documents = kubernetes_documents()
    assert {document["kind"] for _, document in documents} >= {"Deployment", "PersistentVolumeClaim", "Service"}
    for where, document in documents:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} is not valid for Kubernetes {version}: {exc.message} at {list(exc.path)}")


def test_deploy_kubernetes_validation_catches_an_unknown_field() -> None:
    # Strict validation is what makes the test above worth running: a misspelt field must fail it.
    _, container = chatsvc_containers()[0]
    deployment = next(d for _, d in kubernetes_documents() if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = container["readinessProbe"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_deploy_kubernetes_chatsvc_containers_are_probed_non_root_read_only_and_sized() -> None:
    containers = chatsvc_containers()
    assert len(containers) >= 2
    pods = {
        where: document["spec"]["template"]["spec"]
        for where, document in kubernetes_documents()
        if document["kind"] == "Deployment"
    }
    for where, container in containers:
        pod = next(spec for name, spec in pods.items() if where.startswith(name))
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
        assert {mount["mountPath"] for mount in container["volumeMounts"]} >= {"/data", "/tmp"}, where
        assert set(container["resources"]["requests"]) == {"cpu", "memory"}, where
        api_key = next(entry for entry in container["env"] if entry["name"] == "CHATSVC_API_KEY")
        assert "secretKeyRef" in api_key["valueFrom"], f"{where}: the API key must come from a Secret"
        # chatsvc stops within 10 s of SIGTERM: the grace period must leave it that long.
        assert pod["terminationGracePeriodSeconds"] >= 10, where


def test_deploy_kubernetes_sidecar_shares_localhost_and_keeps_data_on_a_claim() -> None:
    (deployment,) = [d for w, d in kubernetes_documents() if w.startswith("sidecar.yaml: Deployment")]
    pod = deployment["spec"]["template"]["spec"]
    app = next(c for c in pod["containers"] if not c["image"].startswith("chatsvc"))
    chat_url = next(entry["value"] for entry in app["env"] if entry["name"] == "CHAT_URL")
    assert chat_url == "http://127.0.0.1:3005"
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    assert claims == {"data": "chatsvc-data"}
    # One chatsvc per SQLite file: a rolling update would start a second one beside the first.
    assert deployment["spec"]["strategy"]["type"] == "Recreate" and deployment["spec"]["replicas"] == 1


def test_deploy_compose_file_validates_against_the_compose_specification() -> None:
    # check-jsonschema ships the Compose Specification's schema: nothing is downloaded.
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_compose_profiles_give_one_instance_a_cluster_behind_nginx_and_postgres() -> None:
    services = compose_services()
    profiles: dict[str, set[str]] = {}
    for name, service in services.items():
        for profile in service["profiles"]:
            profiles.setdefault(profile, set()).add(name)
    assert profiles == {
        "single": {"chatsvc"},
        "cluster": {"redis", "chatsvc-1", "chatsvc-2", "nginx"},
        "postgres": {"postgres", "chatsvc-postgres"},
    }
    single = services["chatsvc"]
    assert single["volumes"] == ["chatsvc-data:/data"] and single["read_only"] is True and single["tmpfs"] == ["/tmp"]
    assert services["chatsvc-1"] == services["chatsvc-2"]
    assert services["chatsvc-1"]["environment"]["CHATSVC_REDIS_URL"] == "redis://redis:6379/0"
    assert services["chatsvc-postgres"]["environment"]["CHATSVC_DATABASE_URL"].startswith("postgresql://")
    nginx_conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert re.findall(r"^\s*server (\S+):3005;", nginx_conf, re.M) == ["chatsvc-1", "chatsvc-2"]
    assert "hash $remote_addr consistent;" in nginx_conf
