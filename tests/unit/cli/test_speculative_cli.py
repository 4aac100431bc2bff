"""`edged config --speculative` against the fake daemon."""

from __future__ import annotations

import pytest

from edged.daemon.cli.main import main

from .conftest import FakeDaemon


def test_cli_config_speculative(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "smollm2", "--speculative", "ngram"]) == 0
    (request,) = fake.requests("Configure")
    assert request.settings.speculative == "ngram"
    assert capsys.readouterr().out.splitlines() == ["smollm2:135m:", "  speculative ngram"]
    assert main(["config", "smollm2", "--speculative", "default", "--json"]) == 0
    assert fake.requests("Configure")[-1].settings.speculative == ""
