"""One source for every setting (issue 17): ``bnfold serve``'s flags are
``Settings``'s fields, and docs/service.md's settings table and the flags
the docs name are checked against both, so that none of them can drift."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import SecretStr
from typer.core import TyperOption
from typer.testing import CliRunner

from bnfold.service.cli import NOT_FLAGS, flag_name, serve
from bnfold.service.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
SERVICE_MD = (ROOT / "docs" / "service.md").read_text()
REPOSITORY_MD = (ROOT / "docs" / "repository.md").read_text()
# Flags of other tools that the docs name (bnfold convert / import, perf_analyzer).
# flags of other tools the docs name (perf_analyzer, the converter, Triton's QA generators)
OTHER_TOOLS = {"--normalize", "--normalized-input", "--shape", "--input-tensor-format", "--onnx"}
# Triton's flags that bnfold does not take, named in docs/service.md where it
# says why (its QA tests that need them, the families it leaves out).
OTHER_TOOLS |= {
    "--allow-gpu-metrics",
    "--cache-config",
    "--exit-on-error",
    "--model-namespacing",
    "--model-repository",
    "--strict-model-config",
}
ROW = re.compile(r"^\| `(BNFOLD_[A-Z0-9_]+)` \| (`--[a-z0-9-]+`|none) \| `([^`]*)` \| (.+) \|$")


def serve_app() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command()(serve)
    return app


def serve_command() -> Any:
    return typer.main.get_command(serve_app())


def cli_flags() -> dict[str, TyperOption]:
    """Each option of ``serve`` by its setting's name."""
    return {
        str(p.name): p
        for p in serve_command().params
        if isinstance(p, TyperOption) and p.name != "help"
    }


def shown(value: object) -> str:
    """A default as the docs write it."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, SecretStr):
        return "set"
    return str(value)


def doc_table() -> dict[str, tuple[str, str, str]]:
    rows = {}
    section = SERVICE_MD.split("## Settings\n", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            variable, flag, default, meaning = match.groups()
            rows[variable] = (flag.strip("`"), default, meaning)
    return rows


def test_every_setting_but_the_token_is_a_flag_with_its_description() -> None:
    flags = cli_flags()
    assert set(flags) == set(Settings.model_fields) - NOT_FLAGS
    for field, option in flags.items():
        info = Settings.model_fields[field]
        assert info.description, f"{field} has no description for its --help"
        assert flag_name(field) in option.opts
        assert option.help is not None
        assert option.help.startswith(str(info.description))
        assert f"env {ENV_PREFIX}{field.upper()}; default {shown(info.default)}" in option.help
        if isinstance(info.default, bool):
            assert option.secondary_opts == [f"--no-{flag_name(field)[2:]}"]


def test_the_docs_table_is_every_setting_with_its_flag_and_default() -> None:
    rows = doc_table()
    expected = {f"{ENV_PREFIX}{field.upper()}": field for field in Settings.model_fields}
    assert set(rows) == set(expected), "docs/service.md's settings table and Settings differ"
    for variable, (flag, default, meaning) in rows.items():
        field = expected[variable]
        assert flag == ("none" if field in NOT_FLAGS else flag_name(field)), variable
        assert default == shown(Settings.model_fields[field].default), variable
        assert meaning.strip(), variable


def test_every_serve_flag_the_docs_name_exists() -> None:
    flags = {opt for option in cli_flags().values() for opt in option.opts}
    flags |= {opt for option in cli_flags().values() for opt in option.secondary_opts}
    named = set()
    for text in (SERVICE_MD, REPOSITORY_MD):
        named |= set(re.findall(r"`(?:bnfold serve )?(--[a-z][a-z0-9-]*)[^`]*`", text))
        named |= set(re.findall(r"bnfold serve [^\n`]*?(--[a-z][a-z0-9-]*)", text))
    assert {"--poll", "--fold-on-load", "--strict-readiness", "--load-timeout"} <= named
    assert {"--default-max-batch-size", "--fold-rtol"} <= named  # docs/repository.md
    assert named - OTHER_TOOLS <= flags, sorted(named - OTHER_TOOLS - flags)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--port", "70000"], "--port: Input should be less than or equal to 65535"),
        (["--device", "tpu"], "--device: Input should be 'auto', 'cuda' or 'cpu'"),
        (["--load-timeout", "0"], "--load-timeout: Input should be greater than 0"),
    ],
)
def test_a_bad_flag_is_a_usage_error_naming_it(args: list[str], problem: str) -> None:
    result = CliRunner().invoke(serve_app(), args, env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert problem in " ".join(result.output.split())
