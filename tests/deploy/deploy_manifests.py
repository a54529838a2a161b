"""Readers for the deployment files: Dockerfile, compose, Kubernetes, KServe.

Each reader returns plain data; the tests compare that data with the app
(routes, ``Settings`` fields, the typer CLI). Nothing here runs Docker or a
cluster; Kubernetes overlays are rendered by ``kubectl kustomize`` where a
kubectl is installed (``kustomize``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "deploy" / "compose.cpu.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
K8S = ROOT / "deploy" / "k8s"
K8S_BASE = K8S / "base"
KUSTOMIZATION = "kustomization.yaml"
PROMETHEUS_ADAPTER = K8S / "prometheus-adapter" / "values.yaml"
KSERVE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"


# --------------------------------------------------------------------- Dockerfile
@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)  # ARG defaults seen in the stage

    def values(self, keyword: str) -> list[str]:
        return [v for k, v in self.instructions if k == keyword]

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for value in self.values("ENV"):
            for item in shlex.split(value):
                key, _, val = item.partition("=")
                env[key] = val
        return env

    def exec_form(self, keyword: str) -> list[str]:
        """The JSON (exec) form of the last ``keyword`` (ENTRYPOINT, CMD)."""
        values = self.values(keyword)
        assert values, f"stage {self.name} has no {keyword}"
        parsed = json.loads(values[-1])
        assert isinstance(parsed, list), f"{keyword} of {self.name} is not in exec form"
        return [str(p) for p in parsed]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def lineage(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, nearest first."""
        chain = [self.stage(name)]
        names = {s.name for s in self.stages}
        while chain[-1].base in names:
            chain.append(self.stage(chain[-1].base))
        return chain

    def substitute(self, text: str, stage: Stage | None = None) -> str:
        """Expand ``${VAR}``/``$VAR`` as Docker would: global ARG defaults
        outside stages (FROM lines); in a stage, the ENV of its lineage and
        the ARGs the stage itself declares (ARGs do not cross FROM)."""
        if stage is None:
            values = dict(self.global_args)
        else:
            values = {}
            for s in reversed(self.lineage(stage.name)):
                values.update(_expand_env(s))
            values.update(stage.args)

        def one(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(2)
            return values.get(name, m.group(0))

        return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, text)


def _expand_env(stage: Stage) -> dict[str, str]:
    return {k: v for k, v in stage.env().items() if "$" not in v}


def _logical_lines(text: str) -> Iterator[str]:
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        yield (current + line).strip()
        current = ""
    if current.strip():
        yield current.strip()


@cache
def dockerfile() -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(DOCKERFILE.read_text()):
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        value = value.strip()
        if keyword == "FROM":
            parts = value.split()
            assert len(parts) == 3 and parts[1].upper() == "AS", f"unnamed stage: {line}"
            stages.append(Stage(name=parts[2], base=parts[0]))
            continue
        if keyword == "ARG":
            name, eq, default = value.partition("=")
            if not stages:
                global_args[name] = default
            else:  # a stage sees a global ARG only when it declares it again
                stages[-1].args[name] = default if eq else global_args.get(name, "")
            continue
        assert stages, f"{keyword} before the first FROM"
        stages[-1].instructions.append((keyword, value))
    return Dockerfile(global_args, stages)


def copy_sources(stage: Stage, df: Dockerfile) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context in a stage."""
    out = []
    for value in stage.values("COPY"):
        words = shlex.split(df.substitute(value, stage))
        if any(w.startswith("--from=") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        out.append((paths[:-1], paths[-1]))
    return out


def context_copies(stage: Stage, df: Dockerfile) -> list[tuple[list[str], str]]:
    """(sources, destination) of the build context that reach ``stage``: its
    own COPYs from the context and, through ``COPY --from=<stage> <dir> <dest>``,
    those of another stage of this file that landed in ``<dir>`` (moved to
    ``<dest>``). Destinations are as written (relative ones to WORKDIR)."""
    stages = {s.name for s in df.stages}
    out = list(copy_sources(stage, df))
    for value in stage.values("COPY"):
        words = shlex.split(df.substitute(value, stage))
        origin = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
        if origin not in stages:
            continue
        folder, dest = [w for w in words if not w.startswith("--")]
        prefix = folder.rstrip("/") + "/"
        for sources, inner in context_copies(df.stage(origin), df):
            if inner.rstrip("/") + "/" == prefix:
                out.append((sources, dest))
            elif inner.startswith(prefix):
                out.append((sources, dest.rstrip("/") + "/" + inner[len(prefix) :]))
    return out


def dockerignore_includes(path: str) -> bool:
    """Whether a context path survives .dockerignore (last matching rule wins;
    a rule matching a parent folder applies to what is inside)."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        rules.append((negate, _ignore_regex(pattern.strip("/"))))
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negate, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            included = negate
    return included


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


# ------------------------------------------------------------------------ YAML
class Reset:
    """Compose's ``!reset`` tag: the key is removed when the files merge."""


class _ComposeLoader(yaml.SafeLoader):
    pass


_ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())
_ComposeLoader.add_constructor(
    "!override",
    lambda loader, node: (
        loader.construct_sequence(node, deep=True)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.MappingNode)
        else loader.construct_scalar(node)
    ),
)


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(path.read_text(), Loader=yaml.SafeLoader) if d]


def merge_compose(base: Any, override: Any) -> Any:
    """Compose's merge rules, as far as these files use them: mappings merge,
    ``!reset`` removes, scalars and sequences of the override win."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                out.pop(key, None)
            elif key in out:
                out[key] = merge_compose(out[key], value)
            else:
                out[key] = value
        return out
    return override


_INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?:(:?-)([^}]*))?\}|\$(\w+)")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose variable interpolation (``${X}``, ``${X:-d}``, ``${X-d}``, ``$$``)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3) or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        return env.get(name, "")

    return _INTERPOLATION.sub(one, value)


@cache
def compose() -> dict[str, Any]:
    """docker-compose.yml as compose sees it with no variable set."""
    return interpolate(load_yaml(COMPOSE), {})


@cache
def compose_cpu() -> dict[str, Any]:
    """docker-compose.yml merged with deploy/compose.cpu.yml."""
    return interpolate(merge_compose(load_yaml(COMPOSE), load_yaml(COMPOSE_CPU)), {})


def env_mapping(environment: Any) -> dict[str, str]:
    """Compose ``environment`` (mapping or ``KEY=VALUE`` list) as a dict."""
    if isinstance(environment, dict):
        return {k: "" if v is None else str(v) for k, v in environment.items()}
    out = {}
    for item in environment or []:
        key, _, value = str(item).partition("=")
        out[key] = value
    return out


def k8s_env(container: Mapping[str, Any]) -> dict[str, str]:
    """Literal ``env`` values of a container (``valueFrom`` entries left out)."""
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def k8s_env_names(container: Mapping[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def object_key(doc: Mapping[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


@cache
def k8s_docs() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object of the base (deploy/k8s/base), by kind/name, as
    written (no overlay applied)."""
    out: dict[str, dict[str, Any]] = {}
    for name in load_yaml(K8S_BASE / KUSTOMIZATION)["resources"]:
        for doc in load_yaml_docs(K8S_BASE / name):
            out[object_key(doc)] = doc
    return out


def kustomization_dirs(group: str) -> list[Path]:
    """The folders of deploy/k8s/<group> (overlays, components) that hold a
    kustomization."""
    return sorted(p.parent for p in (K8S / group).glob(f"*/{KUSTOMIZATION}"))


def kubectls() -> list[str]:
    """The kubectl programs to render with: where versioned ones stand beside
    ``kubectl`` (the Google Cloud SDK package ships kubectl.1.27 ... 1.33, each
    with the kustomize of its release), the oldest and the newest; else
    ``kubectl`` itself; none when there is no kubectl."""
    found = shutil.which("kubectl")
    if found is None:
        return []
    real = Path(found).resolve()
    versioned = []
    for p in real.parent.glob("kubectl.1.*"):
        m = re.fullmatch(r"kubectl\.1\.(\d+)", p.name)
        if m and os.access(p, os.X_OK):
            versioned.append((int(m.group(1)), str(p)))
    if not versioned:
        return [found]
    versioned.sort()
    return sorted({versioned[0][1], versioned[-1][1]})


@cache
def kustomize(folder: Path, kubectl: str) -> list[dict[str, Any]]:
    """``kubectl kustomize <folder>``: the objects ``kubectl apply -k`` would send."""
    done = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise AssertionError(f"{kubectl} kustomize {folder} failed:\n{done.stderr}")
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def k8s_validate(obj: Mapping[str, Any], version: str, schema_file: str | None = None) -> None:
    """Strict validation against kubernetes-validate's schemas: a whole object
    by its kind, or a fragment (a Container, a PodSpec) by schema file."""
    import kubernetes_validate
    from kubernetes_validate import utils

    if schema_file is None:
        kubernetes_validate.validate(obj, version, strict=True)
        return
    from referencing import Registry, Resource

    folder = f"kubernetes-json-schema/v{utils.major_minor(version)}.0-local-strict"
    schema = utils.schema_contents(f"{folder}/{schema_file}", version)
    defs = utils.schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    jsonschema.Draft202012Validator(schema, registry=registry).validate(obj)


def k8s_versions() -> list[str]:
    from kubernetes_validate import utils

    return ["1.29.0", utils.latest_version()]


# ------------------------------------------------------------------ the app side
def settings_from_env(env: Mapping[str, str]) -> Any:
    """``Settings`` built from exactly ``env`` (validates names and values)."""
    from bnfold.service.settings import Settings

    with mock.patch.dict(os.environ, dict(env), clear=True):
        return Settings()


def settings_env_names() -> set[str]:
    from bnfold.service.settings import ENV_PREFIX, Settings

    return {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}


@cache
def _app() -> Any:
    from bnfold.service.app import create_app
    from bnfold.service.settings import Settings

    return create_app(Settings(repo=Path("models")))


def app_serves(method: str, path: str) -> bool:
    """Whether the FastAPI app routes ``method path`` to a handler (asked of
    the app's router itself, so included routers count)."""
    from starlette.routing import Match

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [],
    }
    return any(route.matches(scope)[0] == Match.FULL for route in _app().router.routes)


def bnfold_params(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``bnfold <command> ...`` as the CLI would, without running it.
    Raises the CLI's usage error for an unknown option or a bad value."""
    import typer

    from bnfold.cli import app

    group = typer.main.get_command(app)
    assert argv and argv[0] == "bnfold", argv
    name, *rest = argv[1:]
    command = group.commands[name]  # type: ignore[attr-defined]
    ctx = command.make_context(name, list(rest))
    return name, dict(ctx.params)


def convert_invocation(script: str) -> list[str]:
    """The single ``bnfold convert ...`` command of a shell script."""
    found = re.findall(r"\bbnfold convert\b[^;&|\n]*", script)
    assert len(found) == 1, f"expected one `bnfold convert` in {script!r}"
    return shlex.split(found[0])


def url_port_path(url: str) -> tuple[int, str]:
    m = re.search(r"https?://[^/:'\"]+:(\d+|%s)(/[^'\" ]*)", url)
    assert m, f"no http URL in {url!r}"
    port = m.group(1)
    return (-1 if port == "%s" else int(port)), m.group(2)
