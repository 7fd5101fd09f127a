"""Fetch transformers' own common test files for the INSTALLED transformers release and print where they are.

    python .ci/transformers_tests.py            # prints the folder; export it as HYBRID_VLM_TRANSFORMERS_TESTS
    python .ci/transformers_tests.py --source ~/src/transformers   # use a git checkout's tests/ instead

The files are not vendored: the release's source distribution (`pip download --no-deps --no-binary :all:
transformers==<installed>`, through pip's own cache) is unpacked under `.ci-cache/` (git-ignored). The sdist ships
only the top-level `tests/test_*.py` files; three modules they import are not in it
(`tests/generation/test_utils.py`, `tests/exporters/test_export.py`, `tests/utils/test_configuration_utils.py`). For
each one missing, a placeholder module is written whose `SHIPPED = False` tells `tests/test_transformers_common.py`
which tests cannot run from the sdist (it skips them, naming the missing file). A `--source` checkout has them all.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".ci-cache" / "transformers-tests"
# The modules test_modeling_common.py / test_configuration_common.py import that a release's sdist may lack, and the
# placeholder written for each (only the names those two files import; nothing of transformers' code).
PLACEHOLDERS = {
    "generation/test_utils.py": "class GenerationTesterMixin:\n    \"\"\"Placeholder: no generation tests run.\"\"\"\n",
    "exporters/test_export.py": "class ExportTesterMixin:\n    \"\"\"Placeholder: no export tests run.\"\"\"\n",
    "utils/test_configuration_utils.py": "config_common_kwargs = None  # the real table is not in the sdist\n",
}
NOTE = '"""Written by hybrid_vlm\'s .ci/transformers_tests.py: {path} is not in transformers {version}\'s sdist."""\n'


def installed_version(python: str) -> str:
    return subprocess.check_output([python, "-c", "import transformers; print(transformers.__version__)"],
                                   text=True).strip()


def unpack_sdist(python: str, version: str, target: Path) -> None:
    """Download the sdist (pip's cache makes repeats free) and copy its `tests/*.py` into `target`."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([python, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"transformers=={version}", "-d", tmp], check=True)
        archives = list(Path(tmp).glob("transformers-*.tar.gz"))
        if len(archives) != 1:
            sys.exit(f"expected one transformers sdist in {tmp}, found {[a.name for a in archives]}")
        staging = Path(tmp) / "unpacked"
        with tarfile.open(archives[0]) as archive:
            prefix = f"{archive.getnames()[0].split('/')[0]}/tests/"
            members = [m for m in archive.getmembers() if m.name.startswith(prefix) and m.isfile()
                       and m.name.endswith(".py") and "/" not in m.name[len(prefix):]]
            if not any(m.name.endswith("/test_modeling_common.py") for m in members):
                sys.exit(f"transformers {version}'s sdist has no tests/test_modeling_common.py")
            archive.extractall(staging, members=members, filter="data")
        shutil.copytree(staging / prefix, target)


def add_placeholders(tests: Path, version: str) -> list[str]:
    """Write a placeholder for every imported module the folder lacks; return their paths."""
    written = []
    (tests / "__init__.py").touch()
    for relative, body in PLACEHOLDERS.items():
        path = tests / relative
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(NOTE.format(path=f"tests/{relative}", version=version) + "SHIPPED = False\n\n" + body)
        written.append(relative)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable, help="the interpreter whose transformers to match")
    parser.add_argument("--source", type=Path, help="a transformers git checkout (at the installed release's tag)")
    args = parser.parse_args()
    if args.source is not None:
        tests = args.source.resolve() / "tests"
        if not (tests / "test_modeling_common.py").is_file():
            sys.exit(f"{tests} has no test_modeling_common.py; pass the root of a transformers checkout")
        print(tests)
        return
    version = installed_version(args.python)
    tests = CACHE / version / "tests"
    if not (tests / "test_modeling_common.py").is_file():
        shutil.rmtree(tests, ignore_errors=True)
        tests.parent.mkdir(parents=True, exist_ok=True)
        unpack_sdist(args.python, version, tests)
    written = add_placeholders(tests, version)
    if written:
        print(f"transformers {version}: placeholders for {', '.join(written)}", file=sys.stderr)
    print(tests)


if __name__ == "__main__":
    main()
