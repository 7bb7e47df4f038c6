"""Each teaching notebook executed top to bottom, as shipped: seconds, and the kernel's peak
resident memory. Prints a JSON report; exits 1 if any notebook had a problem.

    python benchmarks/notebooks.py [--out DIR] [--param NAME=VALUE ...] [notebooks ...]

Run it from the repository root, in an empty working directory of checkpoints' choosing
(`--cwd`, default a temporary one). `--out` keeps the executed notebooks, outputs included.
"""

import argparse
import ast
import json
import sys
import tempfile
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.harness.nbrun import execute, parameter_names  # noqa: E402

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, default=NOTEBOOKS)
    parser.add_argument("--param", action="append", default=[], help="NAME=VALUE, for every notebook that has it")
    parser.add_argument("--out", type=Path, help="write the executed notebooks here")
    parser.add_argument("--cwd", type=Path, help="the kernels' working directory")
    args = parser.parse_args()
    params = {k: ast.literal_eval(v) for k, v in (p.split("=", 1) for p in args.param)}
    report, failed = [], False
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.notebooks:
            nb = nbformat.read(path, as_version=4)
            own = {k: v for k, v in params.items() if k in parameter_names(nb)}
            executed, result = execute(path, own, cwd=args.cwd or tmp)
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                nbformat.write(executed, args.out / path.name)
            report.append({"notebook": path.name, "parameters": own, "seconds": result["seconds"],
                           "peak_rss_mb": result["peak_rss_mb"], "runs": len(result["runs"]),
                           "problems": result["problems"]})
            failed = failed or bool(result["problems"])
            print(json.dumps(report[-1]), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
