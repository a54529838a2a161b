"""One package, no links: folding/, converter/ and service/ are real folders
at the top of the repository, mapped into ``bnfold.*`` by pyproject.toml's
``package-dir``; every module has one name.

- pyproject.toml names every package folder, and nothing is a symlink.
- No module, test or benchmark imports a wing by its folder name
  (``import converter...``), the second import root an IDE's auto-import
  would otherwise slip in.
- Every module of the package, imported with the repository root first on
  ``sys.path`` (as ``python -m pytest`` or ``PYTHONPATH=.`` have it), loads
  from its real file under one name.
- ``pip wheel`` of a normal clone and of a ``git -c core.symlinks=false``
  clone (Git for Windows' default) give the same wheel, file for file and
  byte for byte, holding the whole package; installed into a scratch venv it
  imports ``bnfold.service`` and runs ``bnfold --help``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from deploy_manifests import ROOT

WINGS = ("folding", "converter", "service")
# Where Python files live that could import a wing (generated protocol modules
# included: they import each other).
SCANNED = ("bnfold", *WINGS, "tests", "bench")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def package_folders() -> dict[str, Path]:
    """Every importable package of the distribution, by dotted name, found on
    disk through pyproject's package-dir."""
    mapping = pyproject()["tool"]["setuptools"]["package-dir"]
    found = {}
    for top, folder in mapping.items():
        root = ROOT / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            found[".".join((top, *rel))] = init.parent
    return found


def test_pyproject_maps_every_package_folder() -> None:
    setuptools = pyproject()["tool"]["setuptools"]
    assert setuptools["package-dir"] == {
        "bnfold": "bnfold",
        **{f"bnfold.{w}": w for w in WINGS},
    }
    assert sorted(setuptools["packages"]) == sorted(package_folders())
    # the page's static files travel as package data of bnfold.service
    assert "web/*" in setuptools["package-data"]["bnfold.service"]
    assert (ROOT / "service" / "web" / "index.html").is_file()
    # mypy checks the mapped packages too, by their bnfold.* names
    mypy = pyproject()["tool"]["mypy"]
    assert set(mypy["packages"]) == {"bnfold", *(f"bnfold.{w}" for w in WINGS)}


def test_nothing_in_the_package_is_a_link() -> None:
    for folder in ("bnfold", *WINGS):
        top = ROOT / folder
        assert top.is_dir() and not top.is_symlink(), folder
        links = [p for p in top.rglob("*") if p.is_symlink()]
        assert not links, links
    assert not any((ROOT / "bnfold" / w).exists() for w in WINGS)


IMPORT_BY_FOLDER = re.compile(
    rf"^\s*(?:from|import)\s+({'|'.join(WINGS)})(?:\.\w+)*(?:\s+import\b|\s*$|\s+as\b|\s*,)",
    re.M,
)


def test_no_module_imports_a_wing_by_its_folder_name() -> None:
    """Also in code held in strings (scripts a test runs in a subprocess)."""
    offenders = []
    checked = 0
    for top in SCANNED:
        for path in (ROOT / top).rglob("*.py"):
            if ".venv" in path.parts:
                continue
            text = path.read_text(encoding="utf-8")
            checked += 1
            for m in IMPORT_BY_FOLDER.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0).strip()}")
    assert checked > 100
    assert not offenders, "import bnfold.<wing> instead:\n" + "\n".join(offenders)
    # the pattern catches what it is meant to
    for bad in ("import converter", "from service.app import x", "import folding.rules as r"):
        assert IMPORT_BY_FOLDER.search(bad), bad
    for good in ("from bnfold.service import app", "import servicex", "# service.app"):
        assert not IMPORT_BY_FOLDER.search(good), good


PROBE = """
import importlib, json, os, pkgutil, sys
root = sys.argv[1]
sys.path.insert(0, root)  # the repository root first, as python -m pytest has it
skipped = {}
def load(name):
    try:
        return importlib.import_module(name)
    except ImportError as e:  # an optional dependency (torch: the train extra)
        skipped[name] = str(e)
for package in ("bnfold", "bnfold.folding", "bnfold.converter", "bnfold.service"):
    # walk_packages lists folders: each mapped package is walked from its own
    module = load(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        load(info.name)
names = {}
folders = tuple(os.path.join(root, f) + os.sep
                for f in ("bnfold", "folding", "converter", "service"))
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if path and os.path.realpath(path).startswith(folders):
        names.setdefault(os.path.realpath(path), []).append((name, path))
from bnfold.converter.errors import InputError
holders = [n for n, m in list(sys.modules.items())
           if n.split(".")[0] == "bnfold" and getattr(m, "InputError", None) is not None]
print(json.dumps({
    "names": names,
    "skipped": skipped,
    "top": sorted(m for m in sys.modules if m.split(".")[0] in ("folding", "converter", "service")),
    "input_error_holders": holders,
    "input_error_others": [n for n in holders if sys.modules[n].InputError is not InputError],
}))
"""


def test_every_module_has_one_name_and_its_real_file() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.splitlines()[-1])
    assert facts["top"] == [], "a wing imported by its folder name"
    # every module that holds InputError holds the one class
    assert len(facts["input_error_holders"]) > 3 and facts["input_error_others"] == []
    loaded = {n for names in facts["names"].values() for n, _ in names}
    for real, names in facts["names"].items():
        assert len(names) == 1, f"{real} is loaded as {names}"
        ((name, path),) = names
        assert name == "bnfold" or name.startswith("bnfold."), name
        assert path == real, f"{name} is loaded through a link: {path}"
    # the walk reached into every mapped package (or said why not)
    for package in package_folders():
        assert package in loaded or package in facts["skipped"], package
    assert not {k for k in facts["skipped"] if k.startswith("bnfold.service")}


# ----------------------------------------------------------------- the wheel
def _git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _build_env() -> dict[str, str]:
    drop = ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _wheel(src: Path, out: Path) -> Path:
    # the setuptools of this environment: no build isolation, nothing downloaded
    argv = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*argv, "-w", str(out), "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=600,
        env=_build_env(),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (built,) = out.glob("bnfold-*.whl")
    return built


def _contents(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as z:
        return {name: z.read(name) for name in z.namelist()}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The wheels of a normal clone and of a clone without symlinks, of HEAD."""
    pytest.importorskip("setuptools", reason="builds the wheel without build isolation")
    if shutil.which("git") is None or _git("rev-parse", "HEAD", cwd=ROOT).returncode != 0:
        pytest.skip("not a git checkout: nothing to clone")
    work = tmp_path_factory.mktemp("clones")
    built = []
    for name, links in (("normal", "true"), ("no-links", "false")):
        option = f"core.symlinks={links}"  # for the checkout, and kept in the clone
        done = _git("-c", option, "clone", "-q", "-c", option, str(ROOT), str(work / name))
        assert done.returncode == 0, done.stderr
        assert _git("config", "core.symlinks", cwd=work / name).stdout.strip() == links
        built.append(_wheel(work / name, tmp_path_factory.mktemp(f"wheel-{name}")))
    return built[0], built[1]


@pytest.mark.timeout(1200)  # two clones, two wheels: ~30 s on a quiet machine
def test_a_clone_without_symlinks_builds_the_same_wheel(wheels: tuple[Path, Path]) -> None:
    normal, no_links = wheels
    assert normal.name == no_links.name
    a, b = _contents(normal), _contents(no_links)
    assert sorted(a) == sorted(b)
    differ = [n for n in a if a[n] != b[n]]
    assert not differ, differ
    # and it is the whole package, under one top-level name
    name, version = normal.name.split("-")[:2]
    assert {n.split("/")[0] for n in a} == {"bnfold", f"{name}-{version}.dist-info"}
    # every module of HEAD, where the wheel puts it, with HEAD's bytes
    modules = 0
    for package, folder in package_folders().items():
        prefix = package.replace(".", "/")
        top = folder.relative_to(ROOT)
        for path in _git("ls-files", "--", top.as_posix(), cwd=ROOT).stdout.split():
            rel = Path(path).relative_to(top)
            if len(rel.parts) != 1 or rel.suffix != ".py":
                continue  # subpackages are packages of their own in this loop
            head = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True)
            assert a[f"{prefix}/{rel.name}"] == head.stdout, path
            modules += 1
    assert modules > 80
    web = {n.rsplit("/", 1)[1] for n in a if n.startswith("bnfold/service/web/")}
    assert web == {"index.html", "app.js", "style.css", "favicon.svg"}
    proto = {n.rsplit("/", 1)[1] for n in a if n.startswith("bnfold/service/proto/")}
    assert {"LICENSE", "README.md"} <= proto and any(n.endswith(".proto") for n in proto)


def test_the_wheel_installs_and_imports_the_service(
    wheels: tuple[Path, Path], tmp_path: Path
) -> None:
    """A scratch venv holding only the wheel; its dependencies come from this
    environment's site-packages, named by a .pth file (which adds the folder,
    not the editable install's finder: that .pth is not processed there)."""
    _, wheel = wheels
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    argv = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
    done = subprocess.run(
        [*argv, str(wheel)], capture_output=True, text=True, timeout=600, env=_build_env()
    )
    assert done.returncode == 0, done.stderr[-2000:]
    Path(site, "dev-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {k: v for k, v in _build_env().items() if not k.startswith("BNFOLD_")}
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import json, bnfold, bnfold.service.app, bnfold.converter.errors as e;"
            "print(json.dumps([bnfold.__file__, bnfold.service.app.__file__, e.__file__]))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    files = json.loads(probe.stdout)
    assert all(f.startswith(site + os.sep) for f in files), files
    assert files[1].endswith("bnfold/service/app.py")
    helped = subprocess.run(
        [str(venv / "bin" / "bnfold"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "Usage" in helped.stdout and "serve" in helped.stdout
