"""Generate the protobuf and gRPC modules from the vendored ``.proto`` files.

``python -m bnfold.service.proto.generate [OUT_DIR]`` (default: this folder).
protoc writes ``import model_config_pb2`` as a top-level import; inside a
package that must be relative, so the one import line is rewritten. The
output depends only on the ``.proto`` files and the grpcio-tools version.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ("model_config.proto", "grpc_service.proto")
TOP_LEVEL_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def generate(out: Path) -> list[Path]:
    """Write the generated modules into ``out``; returns their paths."""
    from grpc_tools import protoc  # dev dependency: only this script needs it

    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"--proto_path={HERE}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(HERE / p) for p in PROTOS),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed on " + ", ".join(PROTOS))
        written = []
        for path in sorted(Path(tmp).iterdir()):
            if path.name == "model_config_pb2_grpc.py":  # no services in it
                continue
            text = TOP_LEVEL_IMPORT.sub(r"from . import \1 as \2", path.read_text())
            target = out / path.name
            target.write_text(text)
            written.append(target)
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for path in generate(out):
        print(path)
