"""Kubernetes overlays as kustomize sees them, and the signals they scale on.

Two layers of checks:

- Layout rules kustomize enforces, read from the files (always run): every
  resource and component path exists, no kustomization lists a folder that
  contains a root already visited (kustomize's "cycle detected": an overlay
  may not sit inside its base), every patch targets an object its
  kustomization holds (and a JSON patch's path exists in it), no file of a
  kustomization folder is left unlisted.
- ``kubectl kustomize`` of every overlay (where a kubectl is installed: the
  oldest and newest of the versioned ones, whose kustomize releases differ),
  then every rendered object validated strictly against the Kubernetes 1.29
  and the newest schemas kubernetes-validate ships; KEDA's ScaledObject,
  which it does not know, against a schema written here from KEDA's
  documented fields.

The autoscaling objects (HPA on custom metrics, prometheus-adapter rules,
KEDA triggers, Knative annotations of the KServe manifest) must name gauges
the server exports and agree on their per-pod targets.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from deploy_manifests import (
    K8S,
    K8S_BASE,
    KSERVE,
    KUSTOMIZATION,
    PROMETHEUS_ADAPTER,
    ROOT,
    k8s_docs,
    k8s_env,
    k8s_validate,
    k8s_versions,
    kubectls,
    kustomization_dirs,
    kustomize,
    load_yaml,
    load_yaml_docs,
    object_key,
    settings_from_env,
)
from prometheus_client import Gauge

OVERLAYS = kustomization_dirs("overlays")
COMPONENTS = kustomization_dirs("components")
KUSTOMIZATIONS = [K8S_BASE, *OVERLAYS, *COMPONENTS]
KUBECTLS = kubectls()
needs_kubectl = pytest.mark.skipif(
    not KUBECTLS, reason="no kubectl on PATH: overlays checked by their layout only"
)
# The gauges an autoscaler scales on, as the server names them.
IN_FLIGHT = "bnfold_requests_in_flight"
QUEUE_DEPTH = "bnfold_queue_depth"


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def kustomization(folder: Path) -> dict[str, Any]:
    doc = load_yaml(folder / KUSTOMIZATION)
    assert isinstance(doc, dict)
    return doc


def gauges() -> dict[str, Gauge]:
    """The server's gauges by name, from a fresh ``Metrics``."""
    from bnfold.service.metrics import Metrics

    metrics = Metrics()
    return {
        g._name: g  # type: ignore[attr-defined]
        for g in vars(metrics).values()
        if isinstance(g, Gauge)
    }


# ------------------------------------------------------------ layout rules
def walk(folder: Path, visited: tuple[Path, ...] = ()) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every object a kustomization accumulates from its resources and
    components, read from the files (no patch applied), with the file each
    comes from; asserts kustomize's root rules on the way."""
    doc = kustomization(folder)
    visited = (*visited, folder)
    for entry in doc.get("resources", []):
        path = (folder / entry).resolve()
        assert path.exists(), f"{rel(folder)}: resource {entry} does not exist"
        if path.is_dir():
            assert (path / KUSTOMIZATION).is_file(), f"{rel(path)} has no {KUSTOMIZATION}"
            for root in visited:
                # kustomize: "cycle detected: candidate root X contains visited root Y"
                assert not root.is_relative_to(path), (
                    f"{rel(folder)} lists {entry}, which contains {rel(root)}"
                )
            assert kustomization(path)["kind"] == "Kustomization"
            yield from walk(path, visited)
        else:
            for obj in load_yaml_docs(path):
                yield path, obj
    for entry in doc.get("components", []):
        path = (folder / entry).resolve()
        assert (path / KUSTOMIZATION).is_file(), f"{rel(folder)}: no component at {entry}"
        assert kustomization(path)["kind"] == "Component"
        yield from walk(path, visited)


def targets(target: dict[str, Any], objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def matches(obj: dict[str, Any]) -> bool:
        group, _, version = obj["apiVersion"].rpartition("/")
        return (
            target.get("kind", obj["kind"]) == obj["kind"]
            and target.get("name", obj["metadata"]["name"]) == obj["metadata"]["name"]
            and target.get("group", group) == group
            and target.get("version", version) == version
        )

    return [o for o in objects if matches(o)]


def json_pointer_exists(doc: Any, pointer: str) -> bool:
    for part in pointer.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            return False
    return True


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=rel)
def test_kustomization_layout(folder: Path) -> None:
    doc = kustomization(folder)
    expected_api = {
        "Kustomization": "kustomize.config.k8s.io/v1beta1",
        "Component": "kustomize.config.k8s.io/v1alpha1",
    }
    assert doc["apiVersion"] == expected_api[doc["kind"]]
    assert doc["kind"] == ("Component" if folder in COMPONENTS else "Kustomization")
    objects = [obj for _, obj in walk(folder)]
    keys = [object_key(o) for o in objects]
    assert len(keys) == len(set(keys)), f"an object is listed twice: {sorted(keys)}"
    # every file of the folder is used: a resource, or the kustomization itself
    listed = {(folder / r).resolve() for r in doc.get("resources", [])}
    for path in folder.iterdir():
        if path.name != KUSTOMIZATION:
            assert path.resolve() in listed, f"{rel(path)} is not in {rel(folder)}'s resources"
    if folder in COMPONENTS:
        # a component patches what the kustomization using it holds: checked there
        users = [o for o in OVERLAYS if folder in components_of(o)]
        assert users, f"no overlay uses {rel(folder)}"
        return
    for source in [folder, *components_of(folder)]:
        for patch in kustomization(source).get("patches", []):
            check_patch(source, patch, objects)


def components_of(folder: Path) -> list[Path]:
    """The components a kustomization uses, its bases' included."""
    doc = kustomization(folder)
    found = [(folder / c).resolve() for c in doc.get("components", [])]
    for entry in doc.get("resources", []):
        if (folder / entry).is_dir():
            found += components_of((folder / entry).resolve())
    return found


def check_patch(folder: Path, patch: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    assert set(patch) <= {"target", "patch", "path", "options"}
    hit = targets(patch["target"], objects)
    where = f"{rel(folder)}: {patch['target']}"
    assert len(hit) == 1, f"{where} matches {len(hit)} objects"
    if patch["patch"].lstrip().startswith("- op:"):  # a JSON patch (RFC 6902)
        for op in load_yaml_docs_text(patch["patch"]):
            if op["op"] in ("replace", "remove", "test"):
                assert json_pointer_exists(hit[0], op["path"]), f"{where}: {op}"
    else:  # a strategic merge patch names its object itself
        smp = load_yaml_docs_text(patch["patch"])
        assert object_key(smp) == object_key(hit[0]), where


def load_yaml_docs_text(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def test_an_overlay_inside_its_base_is_refused(tmp_path: Path) -> None:
    """The former layout (deploy/k8s/cpu listing ".."): the rule above refuses
    it, and so does kustomize where there is a kubectl."""
    base = tmp_path / "k8s"
    (base / "cpu").mkdir(parents=True)
    (base / "pvc.yaml").write_text((K8S_BASE / "pvc.yaml").read_text())
    head = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
    (base / KUSTOMIZATION).write_text(head + "resources: [pvc.yaml]\n")
    (base / "cpu" / KUSTOMIZATION).write_text(head + "resources: [..]\n")
    with pytest.raises(AssertionError, match="which contains"):
        list(walk(base / "cpu"))
    for kubectl in KUBECTLS:
        with pytest.raises(AssertionError, match="cycle detected"):
            kustomize(base / "cpu", kubectl)


def test_overlays_sit_beside_the_base() -> None:
    """kubectl apply -k refuses a base that contains its overlay; the base lists
    files only, and every overlay reaches the base."""
    base = kustomization(K8S_BASE)
    assert all((K8S_BASE / r).is_file() for r in base["resources"])
    assert not any(p.is_dir() for p in K8S_BASE.iterdir())
    assert OVERLAYS and {p.name for p in OVERLAYS} >= {"cpu", "gpu"}
    for overlay in OVERLAYS:
        files = {path for path, _ in walk(overlay)}
        assert {K8S_BASE / r for r in base["resources"]} <= files, rel(overlay)
    assert not (K8S / KUSTOMIZATION).exists(), "deploy/k8s itself is no kustomization"


def test_docs_name_kustomizations_that_exist() -> None:
    """Every `kubectl apply -k`/`kubectl kustomize` in the docs and the
    manifests' comments names an overlay (rendered below), every `-f` a file."""
    texts = [ROOT / "README.md", ROOT / "docs" / "deploy.md", KSERVE]
    texts += [p for p in K8S.rglob("*.yaml")]
    named_k, named_f = set(), set()
    for path in texts:
        text = path.read_text()
        named_k |= set(re.findall(r"kubectl (?:apply -k|kustomize) (deploy/[\w./-]+)", text))
        named_f |= set(re.findall(r"-f (deploy/[\w./-]+\.ya?ml)", text))
    assert named_k and named_f
    overlays = {rel(p) for p in OVERLAYS}
    for name in named_k:
        assert name.rstrip("/") in overlays, f"{name} is not an overlay"
    for name in named_f:
        assert (ROOT / name).is_file(), name
    assert overlays <= {n.rstrip("/") for n in named_k}, "an overlay the docs never name"


# ------------------------------------------------------- rendered by kubectl
@needs_kubectl
def test_the_docs_own_overlay_renders(tmp_path: Path) -> None:
    """docs/deploy.md's overlay pointing at a registry, in a folder beside
    deploy/ as the doc has it (deploy/ linked into a temporary folder)."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    m = re.search(r"cat > my-bnfold/kustomization.yaml <<'EOF'\n(.*?)\n *EOF\n", text, re.S)
    assert m, "the doc's overlay"
    body = textwrap.dedent(m.group(1)).replace("REGISTRY", "registry.example.com")
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    (tmp_path / "my-bnfold").mkdir()
    (tmp_path / "my-bnfold" / KUSTOMIZATION).write_text(body)
    objects = kustomize(tmp_path / "my-bnfold", KUBECTLS[-1])
    images = set()
    for obj in objects:
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            images.add(c["image"])
    assert images == {
        "registry.example.com/bnfold:0.1.0",
        "registry.example.com/bnfold-converter:0.1.0",
    }


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS, ids=rel)
def test_overlay_renders_alike_with_every_kubectl(overlay: Path) -> None:
    renders = {k: kustomize(overlay, k) for k in KUBECTLS}
    first, *others = renders.values()
    assert {object_key(o) for o in first} >= {
        "Deployment/bnfold",
        "Service/bnfold",
        "PersistentVolumeClaim/bnfold-models",
        "Job/bnfold-convert",
    }
    for other in others:
        assert other == first, f"kustomize releases disagree on {rel(overlay)}: {list(renders)}"


@cache
def rendered(overlay: Path) -> dict[str, dict[str, Any]]:
    return {object_key(o): o for o in kustomize(overlay, KUBECTLS[-1])}


def rendered_cases() -> list[Any]:
    cases = []
    for overlay in OVERLAYS:
        for version in k8s_versions():
            cases.append(pytest.param(overlay, version, id=f"{overlay.name}-{version}"))
    return cases


@needs_kubectl
@pytest.mark.parametrize(("overlay", "version"), rendered_cases())
def test_rendered_objects_match_schemas(overlay: Path, version: str) -> None:
    for key, obj in rendered(overlay).items():
        if obj["apiVersion"].startswith("keda.sh/"):
            validate_scaled_object(obj, version)
            continue
        try:
            k8s_validate(obj, version)
        except Exception as e:
            raise AssertionError(f"{rel(overlay)} {key} against Kubernetes {version}: {e}") from e


def server_container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (c,) = objects["Deployment/bnfold"]["spec"]["template"]["spec"]["containers"]
    return c


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS, ids=rel)
def test_overlay_device(overlay: Path) -> None:
    c = server_container(rendered(overlay))
    settings = settings_from_env(k8s_env(c))
    gpus = c["resources"].get("limits", {}).get("nvidia.com/gpu")
    if overlay.name.startswith("gpu"):
        assert gpus == 1 and settings.device == "auto"  # CPU if the GPU does not load
    else:
        assert overlay.name == "cpu"
        assert gpus is None and settings.device == "cpu"
    # everything else is the base's
    (base_c,) = k8s_docs()["Deployment/bnfold"]["spec"]["template"]["spec"]["containers"]
    assert {k: v for k, v in c.items() if k not in ("env", "resources")} == {
        k: v for k, v in base_c.items() if k not in ("env", "resources")
    }


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS, ids=rel)
def test_one_autoscaler_per_deployment(overlay: Path) -> None:
    objects = rendered(overlay)
    scalers = [
        o for o in objects.values() if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
    ]
    assert len(scalers) == 1, [object_key(o) for o in scalers]
    (scaler,) = scalers
    ref = scaler["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", "bnfold")
    dep = objects["Deployment/bnfold"]
    assert "replicas" not in dep["spec"]
    hpa_metrics = scaler["spec"].get("metrics", [])
    if overlay.name.endswith("keda"):
        assert scaler["kind"] == "ScaledObject"
    elif overlay.name.endswith("hpa-custom-metrics"):
        assert {m["type"] for m in hpa_metrics} == {"Pods"}
        names = {m["pods"]["metric"]["name"] for m in hpa_metrics}
        assert names == {IN_FLIGHT, QUEUE_DEPTH}
        assert names <= adapter_metric_names(), "the adapter serves every metric the HPA reads"
    else:
        assert [m["type"] for m in hpa_metrics] == ["Resource"]


# --------------------------------------------------------- scaling signals
def test_the_server_exports_the_load_gauges() -> None:
    found = gauges()
    assert {IN_FLIGHT, QUEUE_DEPTH} <= set(found)
    for name in (IN_FLIGHT, QUEUE_DEPTH):
        assert found[name]._labelnames == ("model", "version")  # type: ignore[attr-defined]
        # summed over a pod's worker processes (--workers N)
        assert found[name]._multiprocess_mode == "livesum"  # type: ignore[attr-defined]


@cache
def adapter_rules() -> list[dict[str, Any]]:
    values = load_yaml(PROMETHEUS_ADAPTER)
    assert values["rules"]["default"] is False  # only these rules, no guessing
    rules = values["rules"]["custom"]
    assert isinstance(rules, list) and rules
    return rules


def adapter_metric_names() -> set[str]:
    return {r["name"]["as"] for r in adapter_rules()}


def test_prometheus_adapter_rules() -> None:
    """prometheus-adapter's rule format: a series query, the labels that map
    to Kubernetes objects (per pod), a name and the query template."""
    exported = gauges()
    for rule in adapter_rules():
        assert set(rule) == {"seriesQuery", "resources", "name", "metricsQuery"}
        m = re.fullmatch(r"(\w+)\{(.*)\}", rule["seriesQuery"])
        assert m, rule["seriesQuery"]
        series, matchers = m.group(1), m.group(2)
        assert series in exported, f"{series} is not a gauge the server exports"
        assert 'namespace!=""' in matchers and 'pod!=""' in matchers
        assert rule["resources"] == {
            "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        }
        assert re.fullmatch(rule["name"]["matches"], series)
        assert rule["name"]["as"] == series
        for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"]
        assert rule["metricsQuery"].startswith("sum(")  # over the models a pod serves
    values = load_yaml(PROMETHEUS_ADAPTER)
    assert re.fullmatch(r"https?://[\w.-]+", values["prometheus"]["url"])
    assert isinstance(values["prometheus"]["port"], int)


def component_objects(name: str) -> dict[str, dict[str, Any]]:
    return {object_key(o): o for _, o in walk(K8S / "components" / name)}


def hpa_targets() -> dict[str, float]:
    """Per-pod targets of the custom-metrics HPA, by metric name."""
    doc = kustomization(K8S / "components" / "hpa-custom-metrics")
    (patch,) = doc["patches"]
    (op,) = load_yaml_docs_text(patch["patch"])
    assert op["op"] == "replace" and op["path"] == "/spec/metrics"
    for metric in op["value"]:
        k8s_validate(metric, k8s_versions()[0], "metricspec-autoscaling-v2.json")
    return {
        m["pods"]["metric"]["name"]: float(m["pods"]["target"]["averageValue"]) for m in op["value"]
    }


# KEDA's ScaledObject (keda.sh/v1alpha1), written from KEDA's documented
# fields (keda.sh/docs: "ScaledObject specification", "Prometheus" scaler);
# unknown fields are refused, like the API server's structural schema prunes.
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
KEDA_SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": _STRING_MAP,
                "annotations": _STRING_MAP,
            },
            "additionalProperties": False,
        },
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string", "minLength": 1},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "additionalProperties": False,
                    "properties": {
                        "failureThreshold": {"type": "integer", "minimum": 0},
                        "replicas": {"type": "integer", "minimum": 0},
                        "behavior": {
                            "enum": [
                                "static",
                                "currentReplicas",
                                "currentReplicasIfHigher",
                                "currentReplicasIfLower",
                            ]
                        },
                    },
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            # behavior: checked against Kubernetes' own schema below
                            "properties": {"name": {"type": "string"}, "behavior": {}},
                        },
                        "scalingModifiers": {
                            "type": "object",
                            "required": ["target", "formula"],
                            "additionalProperties": False,
                            "properties": {
                                "target": {"type": "string"},
                                "activationTarget": {"type": "string"},
                                "metricType": {"enum": ["AverageValue", "Value"]},
                                "formula": {"type": "string"},
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": _STRING_MAP,  # every value a string
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {
                                        "enum": [
                                            "TriggerAuthentication",
                                            "ClusterTriggerAuthentication",
                                        ]
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
# The prometheus trigger's metadata (KEDA's Prometheus scaler page).
KEDA_PROMETHEUS_METADATA = {
    "type": "object",
    "required": ["serverAddress", "query", "threshold"],
    "additionalProperties": False,
    "properties": {
        "serverAddress": {"type": "string", "pattern": r"^https?://[^\s]+$"},
        "query": {"type": "string", "minLength": 1},
        "threshold": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
        "activationThreshold": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
        "namespace": {"type": "string"},
        "customHeaders": {"type": "string"},
        "ignoreNullValues": {"enum": ["true", "false"]},
        "queryParameters": {"type": "string"},
        "unsafeSsl": {"enum": ["true", "false"]},
        "timeout": {"type": "string", "pattern": r"^[0-9]+$"},
    },
}


def validate_scaled_object(obj: dict[str, Any], version: str) -> None:
    jsonschema.Draft202012Validator(KEDA_SCALED_OBJECT).validate(obj)
    spec = obj["spec"]
    assert spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:  # handed to the HPA KEDA creates, as it is
        k8s_validate(behavior, version, "horizontalpodautoscalerbehavior-autoscaling-v2.json")
    for trigger in spec["triggers"]:
        if trigger["type"] == "prometheus":
            jsonschema.Draft202012Validator(KEDA_PROMETHEUS_METADATA).validate(trigger["metadata"])


@pytest.mark.parametrize("version", k8s_versions())
def test_keda_scaled_object(version: str) -> None:
    objects = component_objects("keda")
    so = objects["ScaledObject/bnfold"]
    validate_scaled_object(so, version)
    # the schema refuses what KEDA does not know (a misspelt field, a number as metadata)
    for broken in (
        {**so, "spec": {**so["spec"], "minReplicas": 2}},
        {**so, "spec": {**so["spec"], "triggers": [{"type": "prometheus", "metadata": {"x": 1}}]}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validate_scaled_object(broken, version)
    # same replica bounds and scale-down window as the HPA it replaces
    hpa = k8s_docs()["HorizontalPodAutoscaler/bnfold"]["spec"]
    spec = so["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
        hpa["minReplicas"],
        hpa["maxReplicas"],
    )
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["behavior"]
    # each trigger sums one exported gauge over the pods; the threshold is per
    # pod (AverageValue), the same as the custom-metrics HPA's target
    exported = gauges()
    per_pod = hpa_targets()
    seen = set()
    for trigger in spec["triggers"]:
        assert trigger["type"] == "prometheus"
        assert trigger.get("metricType", "AverageValue") == "AverageValue"
        meta = trigger["metadata"]
        m = re.fullmatch(r"sum\((\w+)\{([^}]*)\}\)", meta["query"])
        assert m, meta["query"]
        assert m.group(1) in exported
        assert 'pod=~"bnfold-.*"' in m.group(2) and "namespace=" in m.group(2)
        assert float(meta["threshold"]) == per_pod[m.group(1)]
        seen.add(m.group(1))
    assert seen == set(per_pod) == {IN_FLIGHT, QUEUE_DEPTH}


def test_hpa_custom_metrics_targets() -> None:
    per_pod = hpa_targets()
    assert set(per_pod) == {IN_FLIGHT, QUEUE_DEPTH}
    assert 0 < per_pod[QUEUE_DEPTH] <= per_pod[IN_FLIGHT]  # queued requests are in flight too
    assert set(per_pod) <= adapter_metric_names()


def test_kserve_knative_concurrency() -> None:
    """Knative's concurrency (requests in a pod) is what the server reports as
    bnfold_requests_in_flight: the same per-pod target as the HPA's, and a
    hard limit above it that the server's own queue can hold."""
    (isvc,) = load_yaml_docs(KSERVE)
    ann = isvc["metadata"]["annotations"]
    assert ann["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
    assert ann["autoscaling.knative.dev/metric"] == "concurrency"
    target = ann["autoscaling.knative.dev/target"]
    assert isinstance(target, str) and re.fullmatch(r"[1-9][0-9]*", target)
    assert float(target) == hpa_targets()[IN_FLIGHT]
    predictor = isvc["spec"]["predictor"]
    hard = predictor["containerConcurrency"]
    (c,) = predictor["containers"]
    settings = settings_from_env(k8s_env(c))
    assert isinstance(hard, int) and int(target) < hard <= settings.max_queue_size
