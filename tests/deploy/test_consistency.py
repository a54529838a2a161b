"""Offline checks that the Dockerfile, compose, Kubernetes and KServe files
agree with each other and with the app: ports, health routes, BNFOLD_*
variable names and values, image names and build targets, the model volume
versus BNFOLD_REPO, and the `bnfold` command lines (parsed by the real CLI).
Kubernetes objects are validated against the Kubernetes OpenAPI schemas that
kubernetes-validate ships, compose against the compose-spec schema that
check-jsonschema ships; nothing here needs Docker, a cluster or the network.
The Kubernetes objects here are the base's, as written; the overlays, rendered
by kustomize, and the autoscaling signals are tested in test_kustomize.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from deploy_manifests import (
    COMPOSE,
    COMPOSE_CPU,
    DOCKERIGNORE,
    KSERVE,
    PROMETHEUS,
    ROOT,
    app_serves,
    bnfold_params,
    compose,
    compose_cpu,
    context_copies,
    convert_invocation,
    copy_sources,
    dockerfile,
    dockerignore_includes,
    env_mapping,
    k8s_docs,
    k8s_env,
    k8s_env_names,
    k8s_validate,
    k8s_versions,
    load_yaml,
    load_yaml_docs,
    settings_env_names,
    settings_from_env,
    url_port_path,
)

from bnfold.contract import NAME_RE

READY = "/v2/health/ready"
LIVE = "/v2/health/live"
METRICS = "/metrics"
SERVICE_IMAGE = "bnfold"
CONVERTER_IMAGE = "bnfold-converter"
# Fields of KServe's ComponentExtensionSpec that sit inline beside the PodSpec
# fields of a predictor (kserve pkg/apis/serving/v1beta1/component.go).
KSERVE_EXTENSION_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
}


def project_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    assert m
    return m.group(1)


def served(path: str) -> bool:
    return app_serves("GET", path)


def assert_bnfold_env(env: dict[str, str], where: str) -> Any:
    """Every BNFOLD_* name is a Settings field and the values validate."""
    names = {k for k in env if k.startswith("BNFOLD_")}
    unknown = names - settings_env_names()
    assert not unknown, f"{where}: not fields of service.settings.Settings: {sorted(unknown)}"
    return settings_from_env({k: env[k] for k in names})


def image_name(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    return name.rsplit("/", 1)[-1], tag


# ------------------------------------------------------------------------ YAML
def all_yaml_files() -> list[Path]:
    return [
        COMPOSE,
        *sorted((ROOT / "deploy").rglob("*.yml")),
        *sorted((ROOT / "deploy").rglob("*.yaml")),
    ]


@pytest.mark.parametrize("path", all_yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    docs = load_yaml_docs(path) if path != COMPOSE_CPU else [load_yaml(path)]
    assert docs and all(isinstance(d, dict) and d for d in docs), path


# ------------------------------------------------------------------ Dockerfile
def test_dockerfile_targets() -> None:
    df = dockerfile()
    names = [s.name for s in df.stages]
    assert names[-1] == "service", "the default build (no --target) must be the serving image"
    assert "converter" in names
    assert len(set(names)) == len(names)
    # compose builds exactly these targets
    services = compose()["services"]
    assert services["service"]["build"]["target"] == "service"
    assert services["converter"]["build"]["target"] == "converter"
    for svc in ("service", "converter"):
        assert services[svc]["build"]["context"] == "."


def test_service_image_has_no_torch_and_converter_has_it() -> None:
    df = dockerfile()
    installs = {
        s.name: " ".join(v for v in s.values("RUN") if "pip install" in v)
        for s in [*df.lineage("service"), df.stage("service-build"), df.stage("converter")]
    }
    serving = installs["service-build"] + installs["service"] + installs["service-base"]
    assert "pip install -c constraints.txt ." in serving
    assert "[train]" not in serving and "torch" not in serving.replace("find_spec('torch')", "")
    # the build fails if torch got in anyway
    assert "find_spec('torch') is not None" in installs["service-build"]
    # the serving venv is copied from the build stage, nothing else installs packages
    assert "--from=service-build /opt/bnfold /opt/bnfold" in " ".join(
        df.stage("service").values("COPY")
    )
    conv = installs["converter"]
    assert "-c constraints.txt" in conv and "'.[train]'" in conv
    assert "--extra-index-url ${TORCH_INDEX_URL}" in conv
    assert df.stage("converter").args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    constraints = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^torch==", constraints, re.M), "constraints.txt pins torch"


def test_cuda_base_matches_onnxruntime_build() -> None:
    df = dockerfile()
    base = df.substitute(df.lineage("service")[-1].base)
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu\d+\.\d+", base)
    assert m, f"serving base {base!r} is not an NVIDIA CUDA cudnn-runtime image"
    info = importlib.util.find_spec("onnxruntime.capi.build_and_package_info")
    if info is None:
        pytest.skip("onnxruntime has no build info")
    from onnxruntime.capi import build_and_package_info as build

    if getattr(build, "package_name", "") != "onnxruntime-gpu":
        pytest.skip("the installed onnxruntime is the CPU build")
    ort_cuda = str(build.cuda_version)
    assert int(m.group(1)) == int(ort_cuda.split(".")[0]), (
        f"onnxruntime-gpu {build.__version__} is built for CUDA {ort_cuda}; base image {base}"
    )


def test_service_image_contract() -> None:
    df = dockerfile()
    svc = df.stage("service")
    env = {}
    for s in reversed(df.lineage("service")):
        env.update(s.env())
    settings = assert_bnfold_env(env, "Dockerfile service stage")
    # ports: EXPOSE == {BNFOLD_PORT, BNFOLD_GRPC_PORT, BNFOLD_METRICS_PORT}
    exposed = {int(p.split("/")[0]) for v in svc.values("EXPOSE") for p in v.split()}
    ports = {settings.port, settings.grpc_port, settings.metrics_port}
    assert exposed == ports == {8000, 8001, 8002}
    assert settings.repo == Path("/models")
    # the baked-in models land where BNFOLD_REPO points
    sources = copy_sources(svc, df)
    assert [dest.rstrip("/") for _, dest in sources] == [str(settings.repo)]
    assert (ROOT / sources[0][0][0]).is_dir(), "the default MODELS_DIR exists"
    # non-root, with the uid the manifests use
    user = df.substitute(svc.values("USER")[-1], svc)
    uid = int(user.split(":")[0])
    assert uid != 0 and uid == int(df.global_args["APP_UID"])
    # ENTRYPOINT + CMD is a valid `bnfold serve --host 0.0.0.0`
    argv = svc.exec_form("ENTRYPOINT") + svc.exec_form("CMD")
    assert argv == ["bnfold", "serve", "--host", "0.0.0.0"]
    name, params = bnfold_params(argv)
    assert name == "serve" and params["host"] == "0.0.0.0"
    # HEALTHCHECK asks the readiness route on BNFOLD_PORT
    health = svc.values("HEALTHCHECK")[-1]
    assert "CMD [" in health
    port, path = url_port_path(health)
    assert path == READY and served(READY)
    assert port == -1 and "os.environ.get('BNFOLD_PORT', '8000')" in health


def test_converter_image_contract() -> None:
    df = dockerfile()
    conv = df.stage("converter")
    settings = assert_bnfold_env(conv.env(), "Dockerfile converter stage")
    user = df.substitute(conv.values("USER")[-1], conv)
    assert int(user.split(":")[0]) == int(df.global_args["APP_UID"]) != 0
    argv = conv.exec_form("ENTRYPOINT") + conv.exec_form("CMD")
    name, params = bnfold_params(argv)
    assert name == "convert" and params["repo"] == settings.repo == Path("/models")
    assert "install -d -o bnfold -g bnfold /models" in " ".join(conv.values("RUN"))


def test_every_variable_a_stage_uses_is_declared_in_it() -> None:
    """ARGs do not cross FROM: a stage that uses ${APP_UID} must say ARG APP_UID."""
    df = dockerfile()
    for stage in df.stages:
        for keyword, value in stage.instructions:
            left = set(re.findall(r"\$\{?(\w+)", df.substitute(value, stage))) - {"PATH"}
            assert not left, f"stage {stage.name}: {keyword} uses undeclared {sorted(left)}"


def test_the_package_folders_are_named_once() -> None:
    """One ``source`` stage copies the package's folders (real folders, no
    links); both build stages take them from it, and .dockerignore lets each
    in by one rule."""
    df = dockerfile()
    folders = ["bnfold/", "folding/", "converter/", "service/"]
    named = [s for stage in df.stages for srcs, _ in copy_sources(stage, df) for s in srcs]
    assert all(named.count(f) == 1 for f in folders), named
    wanted = sorted(copy_sources(df.stage("source"), df))
    assert {s for srcs, _ in wanted for s in srcs} >= {"pyproject.toml", *folders}
    for name in ("service-build", "converter"):
        stage = df.stage(name)
        assert "/src" in stage.values("WORKDIR")
        assert "--from=source /src/ ./" in stage.values("COPY")
        assert sorted(srcs for srcs, _ in context_copies(stage, df)) == [s for s, _ in wanted]
    rules = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    assert all(rules.count("!" + f.rstrip("/")) == 1 for f in folders)
    assert not any((ROOT / f).is_symlink() for f in folders)


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    df = dockerfile()
    sources = set()
    for stage in df.stages:
        for srcs, _ in copy_sources(stage, df):
            sources.update(srcs)
    assert {
        "pyproject.toml",
        "README.md",
        "constraints.txt",
        "bnfold/",
        "folding/",
        "converter/",
        "service/",
    } <= sources
    checked = 0
    for src in sorted(sources):
        path = ROOT / src
        assert path.exists(), f"COPY source {src} is missing"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            if "__pycache__" in rel:
                assert not dockerignore_includes(rel)
                continue
            assert dockerignore_includes(rel), f"{rel} is copied but .dockerignore drops it"
            checked += 1
    assert checked > 20
    # models can be baked from the usual repository folder
    assert dockerignore_includes("models/digits-mlp/1/model.onnx")
    for dropped in (".git/HEAD", ".venv/bin/python", "runs/x/checkpoint.safetensors", "tests"):
        assert not dockerignore_includes(dropped), dropped
    assert not dockerignore_includes("models/digits-mlp/.tmp-2-ab12/model.onnx")


# --------------------------------------------------------------------- compose
def compose_schema() -> dict[str, Any]:
    ref = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    return json.loads(ref.read_text())


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_compose_matches_compose_spec(variant: str) -> None:
    doc = compose() if variant == "gpu" else compose_cpu()
    schema = compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    errors = sorted(cls(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_compose_service() -> None:
    doc = compose()
    svc = doc["services"]["service"]
    assert svc["depends_on"]["converter"]["condition"] == "service_completed_successfully"
    env = env_mapping(svc["environment"])
    settings = assert_bnfold_env(env, "compose service")
    # ports: published -> BNFOLD_PORT, BNFOLD_GRPC_PORT and BNFOLD_METRICS_PORT
    # == the image's EXPOSE
    published = [str(m).rsplit(":", 2) for m in svc["ports"]]
    assert [(ip, int(host), int(inside)) for ip, host, inside in published] == [
        ("127.0.0.1", 8000, settings.port),
        ("127.0.0.1", 8001, settings.grpc_port),
        ("127.0.0.1", 8002, settings.metrics_port),
    ]
    assert (settings.port, settings.grpc_port) == (8000, 8001)
    # healthcheck on the readiness route of that port
    test = svc["healthcheck"]["test"]
    assert test[0] == "CMD"
    port, path = url_port_path(" ".join(test))
    assert (port, path) == (settings.port, READY) and served(READY)
    # the model volume is mounted where BNFOLD_REPO points, read-only
    (volume,) = svc["volumes"]
    name, target, mode = volume.split(":")
    assert Path(target) == settings.repo and mode == "ro"
    assert name in doc["volumes"]
    # GPU reservation
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert settings.device == "auto"  # CPU when CUDA does not load
    # stop grace covers drain + in-flight requests
    grace = int(svc["stop_grace_period"].rstrip("s"))
    assert grace > settings.drain_s + settings.shutdown_timeout_s
    # image names: the service image is what Kubernetes and KServe run
    assert image_name(svc["image"]) == (SERVICE_IMAGE, project_version())


def test_compose_converter() -> None:
    doc = compose()
    conv = doc["services"]["converter"]
    assert image_name(conv["image"]) == (CONVERTER_IMAGE, project_version())
    assert conv.get("restart") == "no"
    assert "profiles" not in conv  # runs with a plain `docker compose up`
    (volume,) = conv["volumes"]
    name, target = volume.split(":")
    assert name == doc["services"]["service"]["volumes"][0].split(":")[0]
    assert conv["entrypoint"] == ["/bin/sh", "-c"]
    (script,) = conv["command"]
    check_convert_script(script, Path(target))


def check_convert_script(script: str, mount: Path) -> None:
    argv = convert_invocation(script)
    name, params = bnfold_params(argv)
    assert name == "convert"
    assert params["repo"] == mount, "converter writes into the volume the service reads"
    assert NAME_RE.fullmatch(params["name"]), params["name"]
    if importlib.util.find_spec("torch") is not None:
        from bnfold.converter.models import ARCHITECTURES

        assert params["arch"] in ARCHITECTURES
    assert params["data"] == "digits"  # nothing to download in a container
    # "skipped if a version exists": the check looks at <repo>/<name>
    (checked,) = re.findall(r'Path\("([^"]+)"\)', script)
    assert Path(checked) == params["repo"] / params["name"]
    assert "from bnfold.contract import scan_versions" in script
    assert re.search(r"then echo [^;]*; else exec bnfold convert", script)


def test_compose_cpu_override() -> None:
    doc = compose_cpu()
    svc = doc["services"]["service"]
    assert "devices" not in svc["deploy"]["resources"]["reservations"]
    settings = assert_bnfold_env(env_mapping(svc["environment"]), "compose cpu override")
    assert settings.device == "cpu"
    # everything else is the GPU file's
    assert svc["ports"] == compose()["services"]["service"]["ports"]
    assert "!reset" in COMPOSE_CPU.read_text()


def test_prometheus_profile() -> None:
    doc = compose()
    prom = doc["services"]["prometheus"]
    assert prom["profiles"] == ["monitoring"]
    assert prom["depends_on"]["service"]["condition"] == "service_healthy"
    (mount,) = prom["volumes"]
    source, target, mode = mount.split(":")
    assert (ROOT / source).resolve() == PROMETHEUS.resolve() and mode == "ro"
    assert target == "/etc/prometheus/prometheus.yml"
    config = load_yaml(PROMETHEUS)
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == METRICS and served(METRICS)
    port = settings_from_env(env_mapping(doc["services"]["service"]["environment"])).port
    assert job["static_configs"][0]["targets"] == [f"service:{port}"]


# ------------------------------------------------------------------ Kubernetes
@pytest.mark.parametrize("version", k8s_versions())
@pytest.mark.parametrize("key", sorted(k8s_docs()))
def test_k8s_objects_match_schemas(key: str, version: str) -> None:
    k8s_validate(k8s_docs()[key], version)


def container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(found)


def test_k8s_deployment() -> None:
    docs = k8s_docs()
    dep = docs["Deployment/bnfold"]
    pod = dep["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    assert image_name(c["image"]) == image_name(compose()["services"]["service"]["image"])
    name, params = bnfold_params(["bnfold", *c["args"]])
    assert name == "serve" and params["host"] == "0.0.0.0"
    assert k8s_env_names(c) <= settings_env_names()
    settings = assert_bnfold_env(k8s_env(c), "Deployment")
    assert container_port(c, "http") == settings.port
    assert container_port(c, "grpc") == settings.grpc_port == 8001
    assert container_port(c, "metrics") == settings.metrics_port == 8002
    probes = {k: c[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == READY
    assert probes["livenessProbe"]["path"] == LIVE
    for probe in probes.values():
        assert served(probe["path"])
        assert container_port(c, probe["port"]) == settings.port
    # selector and labels
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # model volume at BNFOLD_REPO, from the PVC the Job fills
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    models = [n for n, m in mounts.items() if Path(m["mountPath"]) == settings.repo]
    assert len(models) == 1 and mounts[models[0]]["readOnly"] is True
    claim = volumes[models[0]]["persistentVolumeClaim"]["claimName"]
    assert f"PersistentVolumeClaim/{claim}" in docs
    # readOnlyRootFilesystem needs a writable /tmp
    if c["securityContext"].get("readOnlyRootFilesystem"):
        assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])
    # shutdown: the pod outlives drain + in-flight requests
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.drain_s + settings.shutdown_timeout_s
    # same uid as the image
    uid = pod["spec"]["securityContext"]["runAsUser"]
    assert uid == int(dockerfile().global_args["APP_UID"])
    # Prometheus annotations point at the metrics route of that port
    ann = pod["metadata"]["annotations"]
    assert int(ann["prometheus.io/port"]) == settings.port
    assert ann["prometheus.io/path"] == METRICS and served(METRICS)
    # the base asks for no device: the overlays do (overlays/gpu, overlays/cpu)
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    # the HPA owns the replica count
    assert "replicas" not in dep["spec"]


def test_k8s_service_and_hpa() -> None:
    docs = k8s_docs()
    dep = docs["Deployment/bnfold"]
    pod = dep["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    svc = docs["Service/bnfold"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    settings = settings_from_env(k8s_env(c))
    assert container_port(c, ports["http"]["targetPort"]) == settings.port
    assert container_port(c, ports["grpc"]["targetPort"]) == settings.grpc_port
    assert container_port(c, ports["metrics"]["targetPort"]) == settings.metrics_port
    hpa = docs["HorizontalPodAutoscaler/bnfold"]
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        dep["apiVersion"],
        dep["kind"],
        dep["metadata"]["name"],
    )
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Resource":
            # utilisation is relative to requests: every container must request it
            resource = metric["resource"]["name"]
            assert all(resource in x["resources"]["requests"] for x in pod["spec"]["containers"])


def test_k8s_convert_job() -> None:
    docs = k8s_docs()
    job = docs["Job/bnfold-convert"]
    spec = job["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert image_name(c["image"]) == image_name(compose()["services"]["converter"]["image"])
    assert c["command"] == ["/bin/sh", "-c"]
    (script,) = c["args"]
    (mount,) = c["volumeMounts"]
    check_convert_script(script, Path(mount["mountPath"]))
    # the same script as compose's one-shot converter
    assert script == compose()["services"]["converter"]["command"][0]
    (volume,) = spec["volumes"]
    assert volume["name"] == mount["name"]
    dep = docs["Deployment/bnfold"]["spec"]["template"]["spec"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in dep["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert volume["persistentVolumeClaim"]["claimName"] in claims
    assert spec["securityContext"]["runAsUser"] == int(dockerfile().global_args["APP_UID"])
    pvc = docs[f"PersistentVolumeClaim/{volume['persistentVolumeClaim']['claimName']}"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


# ---------------------------------------------------------------------- KServe
@pytest.mark.parametrize("version", k8s_versions())
def test_kserve_inferenceservice(version: str) -> None:
    (isvc,) = load_yaml_docs(KSERVE)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"])
    predictor = isvc["spec"]["predictor"]
    # a custom predictor: PodSpec fields inline, plus KServe's extension fields
    pod_fields = {k: v for k, v in predictor.items() if k not in KSERVE_EXTENSION_FIELDS}
    k8s_validate(pod_fields, version, "podspec-v1.json")
    (c,) = predictor["containers"]
    k8s_validate(c, version, "container-v1.json")
    assert c["name"] == "kserve-container"
    assert image_name(c["image"]) == image_name(compose()["services"]["service"]["image"])
    name, params = bnfold_params(["bnfold", *c["args"]])
    assert name == "serve" and params["host"] == "0.0.0.0"
    env = k8s_env(c)
    assert env["PROTOCOL"] == "v2", "KServe reads a custom predictor's protocol from PROTOCOL"
    settings = assert_bnfold_env(env, "InferenceService")
    (port,) = c["ports"]  # Knative routes to exactly one port
    assert port["containerPort"] == settings.port == 8080
    for key, path in (("readinessProbe", READY), ("livenessProbe", LIVE)):
        probe = c[key]["httpGet"]
        assert probe["path"] == path and served(path)
        assert probe["port"] == settings.port
    # pvc://<claim>/ is mounted by KServe at /mnt/models, the repository
    m = re.fullmatch(r"pvc://([a-z0-9-]+)/(.*)", env["STORAGE_URI"])
    assert m and f"PersistentVolumeClaim/{m.group(1)}" in k8s_docs()
    assert settings.repo == Path("/mnt/models")
    ann = isvc["metadata"]["annotations"]
    assert int(ann["prometheus.kserve.io/port"]) == settings.port
    assert ann["prometheus.kserve.io/path"] == METRICS and served(METRICS)
    assert predictor["securityContext"]["runAsUser"] == int(dockerfile().global_args["APP_UID"])
    grace = predictor["terminationGracePeriodSeconds"]
    assert grace > settings.drain_s + settings.shutdown_timeout_s
    assert 0 <= predictor["minReplicas"] <= predictor["maxReplicas"]


# ------------------------------------------------- the shell in the manifests
def _fake_bin(tmp_path: Path) -> Path:
    """A PATH folder whose `python` is this interpreter (with the project on
    its path) and whose `bnfold` only records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    record = tmp_path / "bnfold-called"
    fake = bin_dir / "bnfold"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shlex.quote(str(record))}\n')
    fake.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("has_version", [False, True])
def test_converter_script_runs_convert_only_when_no_version(
    tmp_path: Path, has_version: bool
) -> None:
    script = compose()["services"]["converter"]["command"][0]
    repo = tmp_path / "models"
    repo.mkdir()
    if has_version:
        (repo / "digits-mlp" / "1").mkdir(parents=True)
    (repo / "digits-mlp" / ".tmp-1-abc").mkdir(parents=True, exist_ok=True)  # not a version
    script = script.replace("/models", str(repo))
    env = dict(os.environ)
    env["PATH"] = f"{_fake_bin(tmp_path)}:{env['PATH']}"
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        ["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    called = tmp_path / "bnfold-called"
    if has_version:
        assert not called.exists()
        assert "nothing to convert" in done.stdout
    else:
        argv = called.read_text().split()
        assert argv[0] == "convert"
        assert argv[argv.index("--repo") + 1] == str(repo)


def test_k8s_wait_for_models_init_container(tmp_path: Path) -> None:
    docs = k8s_docs()
    pod = docs["Deployment/bnfold"]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (server,) = pod["containers"]
    assert image_name(init["image"]) == image_name(server["image"])
    repo = settings_from_env(k8s_env(server)).repo
    (mount,) = init["volumeMounts"]
    assert Path(mount["mountPath"]) == repo and mount["readOnly"] is True
    models = next(m for m in server["volumeMounts"] if Path(m["mountPath"]) == repo)
    assert mount["name"] == models["name"]
    assert init["command"] == ["python", "-c"]
    (script,) = init["args"]
    assert f'pathlib.Path("{repo}")' in script
    local = tmp_path / "models"
    (local / "digits-mlp" / ".tmp-1-abc").mkdir(parents=True)  # staging is not a version
    script = script.replace(f'"{repo}"', repr(str(local)))
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    waiting = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(1.5)  # still waiting: no version yet
    finally:
        waiting.kill()
        waiting.wait()
    (local / "digits-mlp" / "1").mkdir()
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=300)
    assert done.returncode == 0
