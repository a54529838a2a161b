"""The image test's pod rendering (deploy/image-test/checks.py, `pods`): the
Kubernetes Job and Deployment are found by kind wherever they sit under
deploy/k8s, and their pod templates become CPU Pods for `podman kube play`.
Offline; the kube play itself runs in `make image-test`."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checks() -> Any:
    spec = importlib.util.spec_from_file_location(
        "image_test_checks", ROOT / "deploy" / "image-test" / "checks.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod["spec"].get("initContainers", []) + pod["spec"]["containers"]


def test_the_repository_manifests_render_as_cpu_pods(checks: Any, tmp_path: Path) -> None:
    checks.pods(ROOT / "deploy" / "k8s", tmp_path)
    job = yaml.safe_load((tmp_path / "job-pod.yaml").read_text())
    dep = yaml.safe_load((tmp_path / "deployment-pod.yaml").read_text())

    assert (job["kind"], job["metadata"]["name"]) == ("Pod", "bnfold-convert")
    assert (dep["kind"], dep["metadata"]["name"]) == ("Pod", "bnfold")
    assert job["spec"]["restartPolicy"] == "Never"
    assert dep["spec"]["restartPolicy"] == "Always"
    assert dep["metadata"]["annotations"] == {checks.INIT_TYPE: "always"}
    assert [c["image"] for c in job["spec"]["containers"]] == ["bnfold-converter:0.1.0"]
    assert [c["image"] for c in _containers(dep)] == ["bnfold:0.1.0", "bnfold:0.1.0"]
    for pod in (job, dep):
        assert pod["spec"]["securityContext"]["runAsUser"] == 10001
        for c in _containers(pod):
            assert "nvidia.com/gpu" not in (c.get("resources") or {}).get("limits", {})
            assert {"name": "BNFOLD_DEVICE", "value": "auto"} not in c.get("env", [])
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims == {"bnfold-models"}
    (server,) = dep["spec"]["containers"]
    assert {"name": "BNFOLD_DEVICE", "value": "cpu"} in server["env"]


def test_found_by_kind_base_first_and_patches_skipped(checks: Any, tmp_path: Path) -> None:
    """A layout like base + overlays: the overlay's partial Deployment patch
    (no image) is not taken, and the least deep full object wins."""
    tpl = {"spec": {"containers": [{"name": "c", "image": "bnfold:0.1.0"}]}}
    base = tmp_path / "k8s" / "base"
    overlay = tmp_path / "k8s" / "overlays" / "cpu"
    base.mkdir(parents=True)
    overlay.mkdir(parents=True)
    (base / "all.yaml").write_text(
        yaml.safe_dump_all(
            [
                {"kind": "Job", "metadata": {"name": "j"}, "spec": {"template": tpl}},
                {"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": tpl}},
            ]
        )
    )
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "c", "env": []}]}}}}
    (overlay / "patch.yaml").write_text(
        yaml.safe_dump({"kind": "Deployment", "metadata": {"name": "d"}, **patch})
    )
    path, doc = checks._find(tmp_path / "k8s", "Deployment")
    assert (path, doc["metadata"]["name"]) == (base / "all.yaml", "d")
    with pytest.raises(checks.CheckFailed, match="no complete kind: StatefulSet"):
        checks._find(tmp_path / "k8s", "StatefulSet")
