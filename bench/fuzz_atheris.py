"""Coverage-guided fuzzing with atheris (libFuzzer) over the same targets and
oracles as tests/fuzz_harness.py.

    .venv/bin/pip install atheris
    .venv/bin/python bench/fuzz_atheris.py -runs=1000000 [-max_total_time=600] [corpus dir]

Seeds are the harness's valid reports; a crash or oracle failure is written to
tests/fuzz_corpus/ (replayed by tests/test_fuzz.py) and stops the run.
`make soak` calls it when atheris is importable.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import atheris  # noqa: E402

with atheris.instrument_imports():
    from firmware_shim import cbor, cose  # noqa: F401
    from gateway import envelope, verify  # noqa: F401
from fuzz_harness import Crash, Harness, save_crash  # noqa: E402

HARNESS = Harness()


def one(data: bytes) -> None:
    try:
        HARNESS.run_one(data)
    except Crash as c:
        print("saved %s" % save_crash(c), file=sys.stderr)
        raise


def main() -> None:
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        seeds = Path(tempfile.mkdtemp(prefix="surge-atheris-"))
        for i, s in enumerate(HARNESS.seeds):
            (seeds / ("seed-%d" % i)).write_bytes(s)
        args.append(str(seeds))
    atheris.Setup(args, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
