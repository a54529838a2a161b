"""The CLI as a new user meets it: exit codes per command, help, version, what gets loaded."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold.cli import ARCHITECTURES, LAZY_COMMANDS, ArchName
from bnfold.converter import errors

ROOT = Path(__file__).parents[2]
HEAVY = ("torch", "uvicorn", "fastapi", "pydantic_settings", "prometheus_client")


def bnfold(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bnfold", *args],
        cwd=cwd,
        env=env or {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def tiny_bn_model(path: Path) -> Path:
    """Gemm -> BatchNormalization on 4 features: folds to one Gemm."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "b"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 3).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 3).astype(np.float32), "var"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
        helper.make_node("BatchNormalization", ["h", "gamma", "beta", "mean", "var"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


# --------------------------------------------------------------------------- loading


def test_fold_and_verify_load_neither_torch_nor_the_server(tmp_path: Path) -> None:
    """Run the commands' code paths in one process, then look at what was imported."""
    tiny_bn_model(tmp_path / "ref.onnx")
    code = f"""
import sys
from bnfold.cli import app

def run(*args):
    try:
        return app(list(args), standalone_mode=False)
    except SystemExit as e:
        return e.code

assert run("--help") == 0
assert run("fold", "--help") == 0
assert run("verify", "--help") == 0
assert run("train", "--help") == 0
assert run("fold", r"{tmp_path / "ref.onnx"}", r"{tmp_path / "out.onnx"}") in (None, 0)
assert run("verify", r"{tmp_path / "ref.onnx"}", r"{tmp_path / "out.onnx"}") in (None, 0)
loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)
assert not loaded, loaded
import typer.main
group = typer.main.get_command(app)
assert "serve" in group.commands and "serve" in list(group.commands)
assert "uvicorn" not in sys.modules
# Looked up by name, a lazy command is the real one, options and all.
assert "repo" in {{p.name for p in group.commands["serve"].params}}
assert "uvicorn" in sys.modules
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.onnx").is_file()


def test_a_bad_arch_is_refused_before_torch_is_imported(tmp_path: Path) -> None:
    code = """
import sys
from bnfold.cli import app
try:
    app(["train", "--arch", "vgg"], standalone_mode=False)
except Exception as e:
    assert "'vgg' is not one of" in str(e), e
else:
    raise AssertionError("--arch vgg was accepted")
assert "torch" not in sys.modules
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_lazy_commands_describe_themselves_as_their_code_does() -> None:
    import importlib

    for name, (target, short) in LAZY_COMMANDS.items():
        module, _, attr = target.partition(":")
        doc = getattr(importlib.import_module(module), attr).__doc__
        assert doc.strip().splitlines()[0] == short, name


def test_the_cli_knows_every_architecture_without_torch() -> None:
    from bnfold.converter.models import ARCHITECTURES as BUILT

    assert ARCHITECTURES == tuple(BUILT) == typing.get_args(ArchName)


# --------------------------------------------------------------------------- help and version


def test_version(tmp_path: Path) -> None:
    from bnfold import __version__

    r = bnfold("--version", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout == f"bnfold {__version__}\n" == "bnfold 0.1.0\n"


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (
            "train",
            [
                "Run folder to write. [default: (runs/<data>-<arch>)]",
                "Training epochs: mlp 10, cifar-cnn 8, fer-cnn 5, resnet 8, timm:NAME 3 unless "
                "given.",
                "[default: (per architecture)]",
                "Architecture: mlp, cifar-cnn, fer-cnn, resnet, or timm:NAME",
                "never downloaded; the timm extra). [default: mlp]",
            ],
        ),
        (
            "convert",
            [
                "Version to write; one that exists is refused before training. "
                "[default: (highest + 1)]",
                "Model name in the repository. [default: (<data>-<arch>)]",
            ],
        ),
        (
            "serve",
            [
                "(env BNFOLD_REPO; default models)",
                "(env BNFOLD_PORT; default 8000)",
                "(env BNFOLD_HOST; default 127.0.0.1)",
                "(env BNFOLD_WORKERS; default 1)",
                "(env BNFOLD_DEVICE; default auto)",
                "(env BNFOLD_LOG_LEVEL; default info)",
            ],
        ),
    ],
)
def test_help_shows_the_real_defaults(tmp_path: Path, command: str, shown: list[str]) -> None:
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERMINAL_WIDTH": "250"}
    r = bnfold(command, "--help", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.replace("│", " ").split())
    for piece in shown:
        assert piece in text, piece
    assert " ." not in text  # a default swallowed as markup left "write ." behind


def test_epoch_defaults_in_help_match_the_pipeline() -> None:
    from bnfold.converter import timm_models
    from bnfold.converter.pipeline import DEFAULT_EPOCHS

    listed = "mlp 10, cifar-cnn 8, fer-cnn 5, resnet 8, timm:NAME 3"
    epochs = {**DEFAULT_EPOCHS, "timm:NAME": timm_models.EPOCHS}
    assert listed == ", ".join(f"{k} {v}" for k, v in epochs.items())


def option_names(command: str) -> list[str]:
    """Every flag of ``bnfold COMMAND`` (both spellings of a boolean pair)."""
    import typer.main

    from bnfold.cli import app

    group = typer.main.get_command(app)
    return [
        name
        for param in group.commands[command].params
        for name in (*param.opts, *param.secondary_opts)
        if name.startswith("-")
    ]


@pytest.mark.parametrize("command", errors.COMMAND_EXIT_CODES)
def test_help_is_readable_at_80_columns(tmp_path: Path, command: str) -> None:
    """Issue 20: at 80 columns the option column cut names (``--no-strict-readine…``)."""
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    env.pop("TERMINAL_WIDTH", None)
    r = bnfold(command, "--help", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    assert "…" not in r.stdout
    words = set(re.findall(r"(?<![\w-])-{1,2}[\w][\w-]*", r.stdout))
    names = [*option_names(command), "--help"]
    assert [n for n in names if n not in words] == []


@pytest.mark.parametrize("command", errors.COMMAND_EXIT_CODES)
def test_each_help_lists_the_exit_codes_its_command_can_return(
    tmp_path: Path, command: str
) -> None:
    r = bnfold(command, "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.replace("│", " ").split())
    footer = errors.exit_codes_help(command)
    assert footer in text
    codes = [int(c) for c in re.findall(r"(?:: |; )(\d) ", footer)]
    assert codes == list(errors.COMMAND_EXIT_CODES[command])
    # serve, demo and the rest said "3 parity failure" before issue 20
    proves_parity = command in ("export", "verify", "convert", "import", "quantize", "demo")
    assert ("3 " in footer) == proves_parity
    if command in ("serve", "train", "fold", "sample-image"):
        assert "parity" not in footer


def test_every_command_has_its_exit_codes() -> None:
    from bnfold.cli import COMMAND_ORDER

    assert set(COMMAND_ORDER) == set(errors.COMMAND_EXIT_CODES)


def test_the_readme_table_holds_every_command_and_only_commands() -> None:
    """Issue 20: the table had no ``import``."""
    from bnfold.cli import COMMAND_ORDER

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The command line", 1)[1].split("\nArchitectures", 1)[0]
    named = re.findall(r"^\| `bnfold ([a-z-]+)[ `]", section, re.M)
    assert named, "the README's command table was not found"
    assert set(named) <= set(COMMAND_ORDER), set(named) - set(COMMAND_ORDER)
    assert set(COMMAND_ORDER) <= set(named), set(COMMAND_ORDER) - set(named)


# --------------------------------------------------------------------------- output


def test_output_in_a_pipe_is_not_wrapped_at_80_columns(tmp_path: Path) -> None:
    deep = tmp_path / ("a-rather-long-folder-name-" * 3) / "and-another-one-below-it"
    tiny_bn_model(deep / "reference.onnx")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR")}
    r = bnfold(
        "fold", str(deep / "reference.onnx"), str(deep / "model.onnx"), cwd=tmp_path, env=env
    )
    assert r.returncode == 0, r.stderr
    line = f"wrote {deep / 'model.onnx'} (1 BN: 1 folded, 0 partial, 0 kept; 0 ops left by BNs)"
    assert len(line) > 120
    assert line in r.stderr.splitlines()


# --------------------------------------------------------------------------- exit codes


def test_fold_exit_codes(tmp_path: Path) -> None:
    tiny_bn_model(tmp_path / "ref.onnx")
    assert bnfold("fold", "ref.onnx", "out.onnx", cwd=tmp_path).returncode == 0
    r = bnfold("fold", "missing.onnx", "out.onnx", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (2, "error: missing.onnx: no such file\n")
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01 not protobuf \xff")
    r = bnfold("fold", "junk.onnx", "out.onnx", cwd=tmp_path)
    assert r.returncode == 2 and "junk.onnx: not an ONNX model" in r.stderr
    r = bnfold("fold", "--no-such-flag", cwd=tmp_path)
    assert r.returncode == 2 and "No such option" in r.stderr


def test_verify_exit_codes(tmp_path: Path) -> None:
    tiny_bn_model(tmp_path / "ref.onnx")
    assert bnfold("fold", "ref.onnx", "out.onnx", cwd=tmp_path).returncode == 0
    assert bnfold("verify", "ref.onnx", "out.onnx", cwd=tmp_path).returncode == 0
    r = bnfold("verify", "ref.onnx", "out.onnx", "--rtol", "0", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "parity failed: out.onnx does not compute what ref.onnx computes" in r.stderr
    r = bnfold("verify", "ref.onnx", "out.onnx", "--data", "csv:x", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (2, "error: --data 'csv:x': expected npz:PATH\n")


def test_a_bug_exits_1_with_its_traceback(tmp_path: Path) -> None:
    tiny_bn_model(tmp_path / "ref.onnx")
    code = """
import sys
import bnfold.folding as folding

def broken(model):
    raise ValueError("an invariant of the folding broke")

folding.fold = broken
sys.argv = ["bnfold", "fold", "ref.onnx", "out.onnx"]
from bnfold.cli import main
main()
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr
    assert "ValueError: an invariant of the folding broke" in r.stderr
    assert "bnfold: unexpected error" in r.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_convert_refuses_an_existing_version_before_training(tmp_path: Path) -> None:
    (tmp_path / "models/digits-mlp/1").mkdir(parents=True)
    r = bnfold("convert", "--repo", "models", "--version", "1", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "models/digits-mlp/1 already exists; versions are immutable" in r.stderr
    assert "loading" not in r.stderr and "epoch" not in r.stderr


def test_convert_parity_failure_exits_3_and_writes_nothing(tmp_path: Path) -> None:
    args = ["convert", "--repo", "models", "--limit", "100", "--epochs", "1", "--rtol", "0"]
    r = bnfold(*args, cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "parity failed" in r.stderr and "nothing was written" in r.stderr
    assert '"torch_vs_folded"' in r.stderr  # the comparisons are printed
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "models/digits-mlp/1").exists()


def test_serve_and_demo_usage_errors_exit_2(tmp_path: Path) -> None:
    r = bnfold("serve", "--repo", "no-such-repo", cwd=tmp_path)
    assert r.returncode == 2 and "model repository no-such-repo is not a folder" in r.stderr
    r = bnfold("demo", "--port", "0", cwd=tmp_path)
    assert r.returncode == 2 and "--port" in r.stderr


def test_a_busy_grpc_port_exits_2_naming_it(tmp_path: Path) -> None:
    """Issue 20: a 40-line traceback and exit 3 before."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            http = free.getsockname()[1]
        r = bnfold(
            "serve", "--repo", str(tmp_path), "--port", str(http), "--grpc-port", str(port),
            cwd=tmp_path,
        )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "--grpc-port" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) < 10
    r = bnfold(
        "serve", "--repo", str(tmp_path), "--port", str(http), "--grpc-port", str(http),
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2 and f"--grpc-port {http} is the HTTP --port too" in r.stderr


def test_a_server_that_fails_to_start_exits_1_not_3(tmp_path: Path) -> None:
    """uvicorn exits 3 when the lifespan fails; 3 is bnfold's parity failure.
    The failure here is a bug put into the app's startup, as
    test_a_bug_exits_1_with_its_traceback puts one into the fold."""
    code = """
import sys
from contextlib import asynccontextmanager
from fastapi import FastAPI
import bnfold.service.app as service_app

@asynccontextmanager
async def broken(app):
    raise RuntimeError("an invariant of the startup broke")
    yield

service_app.create_app = lambda settings: FastAPI(lifespan=broken)
sys.argv = ["bnfold", "serve", "--repo", ".", "--port", "0", "--grpc-port", "0",
            "--metrics-port", "0"]
from bnfold.cli import main
main()
"""
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 1, r.stderr
    assert "an invariant of the startup broke" in r.stderr


def test_an_unwritable_output_is_an_input_error(tmp_path: Path) -> None:
    tiny_bn_model(tmp_path / "ref.onnx")
    (tmp_path / "a-file").write_text("")
    r = bnfold("fold", "ref.onnx", "a-file/out.onnx", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: a-file") and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- the table


def test_one_table_gives_every_error_its_exit_code() -> None:
    from bnfold.contract import ContractError
    from bnfold.converter.data import DataError
    from bnfold.converter.export import ExportError
    from bnfold.converter.pipeline import ParityError
    from bnfold.converter.repository import RepositoryError
    from bnfold.converter.train import RunError
    from bnfold.converter.verify import ModelFileError, ModelRunError

    expected = {
        DataError("x"): 2,
        RunError("x"): 2,
        ModelFileError("x"): 2,
        ModelRunError("x"): 2,
        ContractError("x"): 2,
        RepositoryError("x"): 2,
        PermissionError(13, "Permission denied", "/models"): 2,
        ParityError("x", {}): 3,
        ExportError("x"): 3,
        ValueError("a bug"): None,
        KeyError("a bug"): None,
        OSError("no file named"): None,
    }
    assert {type(e).__name__: errors.exit_code(e) for e in expected} == {
        type(e).__name__: code for e, code in expected.items()
    }
    assert errors.message(PermissionError(13, "Permission denied", "/m")) == (
        "/m: Permission denied"
    )
    # Existing callers that catch ValueError or RuntimeError keep working.
    assert isinstance(DataError("x"), ValueError) and isinstance(ParityError("x", {}), RuntimeError)


# --------------------------------------------------------------------------- progress


def test_training_reports_every_batch() -> None:
    from bnfold.converter.data import load, prepare
    from bnfold.converter.models import ArchConfig
    from bnfold.converter.train import TrainConfig, train

    splits = prepare(load("digits", input_shape=(64,)), (64,), limit=120)
    n = len(splits.x_train)
    calls: list[tuple[int, int, int]] = []
    epochs: list[int] = []
    train(
        ArchConfig("mlp", (64,), len(splits.labels)),
        splits,
        TrainConfig(epochs=2, batch_size=16),
        on_batch=lambda e, b, k: calls.append((e, b, k)),
        on_epoch=lambda e, row: epochs.append(e),
    )
    per_epoch = len([i for i in range(0, n, 16) if min(16, n - i) >= 2])
    assert per_epoch > 2
    assert calls == [(e, b, per_epoch) for e in (1, 2) for b in range(1, per_epoch + 1)]
    assert epochs == [1, 2]


def test_the_training_bar_moves_per_batch_and_ends_with_the_last_epoch() -> None:
    from bnfold.cli import _TrainingBar

    row = {"train_loss": 1.0, "train_accuracy": 0.5, "val_accuracy": 0.5}
    with _TrainingBar("mlp", epochs=2) as bar:
        assert bar.progress is None  # nothing shown before the first batch
        bar.batch(1, 1, 4)
        task = bar.progress.tasks[0]
        assert (task.completed, task.total) == (1, 8)
        bar.batch(1, 4, 4)
        bar.epoch(1, row)
        bar.batch(2, 3, 4)
        assert task.completed == 7 and task.fields["epoch"] == 2
        assert "val_acc 0.500" in task.fields["stats"]
        bar.batch(2, 4, 4)
        bar.epoch(2, row)
        assert bar.progress is None and task.completed == 8
