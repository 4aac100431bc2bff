"""`edged config --kv-type` against the fake daemon."""

from __future__ import annotations

import pytest

from edged.daemon.cli.main import main

from .conftest import FakeDaemon


def test_cli_config_kv_type(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "smollm2", "--kv-type", "q8_0"]) == 0
    (request,) = fake.requests("Configure")
    assert request.settings.kv_type == "q8_0"
    assert capsys.readouterr().out.splitlines() == ["smollm2:135m:", "  KV type     q8_0"]
    assert main(["config", "smollm2", "--kv-type", "auto", "--json"]) == 0
    assert fake.requests("Configure")[-1].settings.kv_type == ""
    with pytest.raises(SystemExit):
        main(["config", "smollm2", "--kv-type", "q5_1"])
