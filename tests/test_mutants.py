"""`make mutants` is not part of `make test` (it runs for minutes), but its list must follow the code: every mutant
still applies (its text is in its file exactly once) and names a test that exists."""

import subprocess
import sys

import pytest
from mutants import MUTANTS, ROOT, stale


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_every_mutant_still_applies_to_the_code(mutant):
    assert stale(mutant) is None


def test_every_mutant_names_a_test_that_exists():
    tests = sorted({m.test for m in MUTANTS})
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *tests],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    collected = {line.split("[")[0] for line in out.stdout.splitlines() if "::" in line}
    assert set(tests) <= collected
