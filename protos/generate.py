"""Generate the Python gRPC code for recsvc's API into ``recsvc/_proto``.

Usage: ``python protos/generate.py [--out DIR]``. The generated package is never edited by hand;
``tests/unit/test_proto_generated.py`` regenerates it and fails when the committed copy differs.

The .proto files live under ``protos/recsvc/v1``; they are mapped to the virtual path
``recsvc/_proto/v1`` so that the generated imports point at our private package
(``from recsvc._proto.v1 import ...``) rather than at a top-level ``recsvc.v1``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos" / "recsvc" / "v1"
VIRTUAL_DIR = "recsvc/_proto/v1"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc for every .proto under protos/recsvc/v1; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(PROTO_DIR.glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    grpc_include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{VIRTUAL_DIR}={PROTO_DIR}",
        f"-I{grpc_include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(f"{VIRTUAL_DIR}/{p.name}" for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package = out_dir / VIRTUAL_DIR
    for init in (out_dir / "recsvc/_proto", package):
        (init / "__init__.py").write_text('"""Generated gRPC code. Do not edit."""\n')
    return sorted(p for p in package.iterdir() if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repo)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
