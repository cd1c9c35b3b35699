"""A CI-sized fuzzing run of every parser, and the regression inputs it ever found."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.harness import EXERCISE, REGRESSIONS, check_input, fuzz, make_seed

CI_EXAMPLES = 100
# Damaged LUKS2 primaries fall back to the secondary header with a warning: expected, not news.
pytestmark = pytest.mark.filterwarnings("ignore:.*using the (primary|secondary) header:UserWarning")


@pytest.mark.parametrize("fmt", sorted(EXERCISE))
def test_fuzz_parser(fmt: str, tmp_path: Path) -> None:
    seed = make_seed(fmt, tmp_path)
    check_input(fmt, seed, tmp_path)  # the unmutated seed opens
    assert fuzz(fmt, CI_EXAMPLES, seed, tmp_path) >= CI_EXAMPLES // 2


def test_fuzz_regressions(tmp_path: Path) -> None:
    """Every input a fuzzing run ever broke a parser with now opens or is refused cleanly."""
    cases = sorted(p for p in REGRESSIONS.glob("*/*.bin"))
    for case in cases:
        check_input(case.parent.name, case.read_bytes(), tmp_path)
