from __future__ import annotations

import pytest

from tests.parts import missing_part


@pytest.mark.parametrize("value", ["1", "true", "True", "yes"])
def test_a_missing_part_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CI", value)

    with pytest.raises(pytest.fail.Exception, match="no registry; CI must provide"):
        missing_part("no registry")


@pytest.mark.parametrize("value", [None, "", "0", "false"])
def test_a_missing_part_skips_outside_ci(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)

    with pytest.raises(pytest.skip.Exception, match="no registry"):
        missing_part("no registry")
