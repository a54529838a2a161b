"""mypy on the package as it installs: bnfold/ with folding/, converter/ and
service/ mapped into it by pyproject.toml's ``package-dir``.

mypy finds a module by its folder, not through setuptools' mapping nor the
editable install's import hook, so run in the repository it cannot see
``bnfold.converter`` (pyproject's ``[tool.mypy]`` names the mapped packages,
so a plain ``mypy`` there stops with "Can't find package" rather than check
less). This lays the package out as the wheel does, in build/typecheck
(copies of the sources, refreshed on every run), runs mypy there with
pyproject.toml's settings, and prints mypy's report with every path turned
back into the repository's own file. Exit status: mypy's.

    python tools/typecheck.py [mypy options]      (make typecheck)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "build" / "typecheck"
SOURCES = ("*.py", "*.pyi", "py.typed")


def mapping() -> dict[str, Path]:
    """Package path in the wheel (``bnfold/converter``) -> folder in the repository."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir = config["tool"]["setuptools"]["package-dir"]
    return {name.replace(".", "/"): ROOT / folder for name, folder in package_dir.items()}


def stage(layout: dict[str, Path]) -> None:
    """Copy every source file to where the wheel puts it; drop stale copies."""
    wanted: dict[Path, Path] = {}
    for target, folder in layout.items():
        for pattern in SOURCES:
            for src in folder.rglob(pattern):
                if "__pycache__" in src.parts:
                    continue
                rel = src.relative_to(folder)
                # a folder mapped elsewhere is not part of this package
                if any((folder / rel.parts[0]).resolve() == f for f in layout.values()):
                    continue
                wanted[STAGE / target / rel] = src
    if STAGE.exists():
        for old in STAGE.rglob("*"):
            if old.is_file() and old not in wanted and ".mypy_cache" not in old.parts:
                old.unlink()
    for dest, src in wanted.items():
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists() or dest.read_bytes() != src.read_bytes():
            shutil.copy2(src, dest)


def source_path(line: str, layout: dict[str, Path]) -> str:
    """A line of mypy's report with a staged path turned into the repository's."""
    for target in sorted(layout, key=len, reverse=True):
        prefix = target + "/"
        if line.startswith(prefix):
            real = layout[target].relative_to(ROOT).as_posix()
            return real + "/" + line[len(prefix) :]
    return line


def main(argv: list[str]) -> int:
    layout = mapping()
    stage(layout)
    done = subprocess.run(
        # -p bnfold: the whole package, its mapped subpackages included (the
        # config's list of them is there to stop a plain `mypy` in the repository)
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "-p",
            "bnfold",
            *argv,
        ],
        cwd=STAGE,
        capture_output=True,
        text=True,
    )
    for line in done.stdout.splitlines():
        print(source_path(line, layout))
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
