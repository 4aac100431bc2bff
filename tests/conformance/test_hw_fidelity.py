"""`edged hw --model smollm2` after `edged convert smollm2 --to onnx`, through a real
daemon: every CPU backend and variant is calibrated for speed at 1 and at the
daemon's parallelism and for fidelity against the reference (exact arithmetic:
the GGUF's own weights in F32 on llama.cpp, which llama.cpp on the GGUF is
measured against too), and the choice is within the fidelity threshold."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.backends import registry
from harness.daemon import Daemon, clone_store, start_daemon

# The first test may convert the model (the session-wide onnx_store) and then
# calibrates three backends with a fidelity run each.
pytestmark = [pytest.mark.model, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def hw_daemon(
    onnx_store: Path, openvino_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("hw-fidelity")
    clone_store(onnx_store, root / "data")
    d = start_daemon(root, EDGED_PARALLEL="4", EDGED_CACHE_DIR=str(openvino_cache))
    yield d
    d.stop()


def edged(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged.daemon.cli.main", "--no-autostart", *args],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=1500,
    )


def test_hw_shows_speed_and_fidelity_per_backend_and_picks_a_faithful_one(
    hw_daemon: Daemon,
) -> None:
    out = edged(hw_daemon, "hw", "--model", "smollm2", "--calibrate", "--json")
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert not [n for n in reply.get("notes", []) if "calibration of" in n], reply["notes"]
    cals = {c["backend"]: c for c in reply["calibrations"]}
    assert set(cals) == set(registry.installed_names())  # every CPU backend, incl. ONNX
    for c in cals.values():
        assert c["decode_tokens_per_second"] > 0 and c["streams"] == 4
        assert c["aggregate_tokens_per_second"] > 0
        assert c["fidelity"]["measure"], c["fidelity"]  # measured, no error
    gguf = cals["llama.cpp"]["fidelity"]
    # the GGUF on llama.cpp is measured too: its 8-bit activations are not exact
    assert gguf["measure"] == "logits" and 0.9 < gguf["agreement"] < 1, gguf
    assert gguf["reference"].startswith("exact arithmetic"), gguf
    assert gguf["perplexity"] != gguf["perplexity_reference"]
    if "onnxruntime" in cals:
        onnx = cals["onnxruntime"]["fidelity"]
        assert onnx["measure"] == "logits" and onnx["tokens"] > 500
        assert 0 < onnx["agreement"] <= 1 and onnx["mean_kl"] > 0
        assert onnx["perplexity"] > 1 and onnx["perplexity_reference"] > 1
        assert onnx["reference"] == gguf["reference"]
    if "openvino" in cals:
        ov = cals["openvino"]["fidelity"]
        assert ov["measure"] == "greedy" and ov["tokens"] > 0 and 0 < ov["agreement"] <= 1

    cpu = [b for b in reply["backends"] if b["available"] and b["device"] == "cpu"]
    assert {b["backend"] for b in cpu} == set(cals)
    chosen = cpu[0]
    assert chosen["fidelity"]["within_threshold"]
    threshold = chosen["fidelity"]["threshold"]
    for b in cpu:
        f = b["fidelity"]
        held = f["measure"] == "reference" or f["agreement"] >= threshold
        assert f.get("within_threshold", False) == held, b
    # a choice below the threshold never ranks before one within it
    flags = [b["fidelity"].get("within_threshold", False) for b in cpu]
    assert flags == sorted(flags, reverse=True)

    text = edged(hw_daemon, "hw", "--model", "smollm2")
    assert text.returncode == 0, text.stderr
    assert "at 4 streams together" in text.stdout
    assert "fidelity: the reference" not in text.stdout
    assert "top-1 agreement" in text.stdout
    for b in cpu:
        if not b["fidelity"].get("within_threshold", False):
            assert "BELOW the fidelity threshold" in text.stdout
            assert "used only when asked for" in text.stdout


def test_show_prints_the_same_figures(hw_daemon: Daemon) -> None:
    out = edged(hw_daemon, "show", "smollm2")
    assert out.returncode == 0, out.stderr
    assert "tokens/s at 1 stream" in out.stdout and "top-1 agreement" in out.stdout


def test_a_kv_cache_type_setting_is_calibrated_apart(hw_daemon: Daemon) -> None:
    """Speed and fidelity depend on the KV cache type a load gets: with the model's
    kv_type set to q8_0, llama.cpp is measured again with that cache (against the
    same exact reference); the backends without q8_0 run their own cache; and
    going back to f16 finds llama.cpp's f16 figures still cached."""
    before = json.loads(edged(hw_daemon, "hw", "--model", "smollm2", "--json").stdout)
    f16 = {c["backend"]: c for c in before["calibrations"]}
    assert f16["llama.cpp"]["kv_type"] == "f16"
    assert edged(hw_daemon, "config", "smollm2", "--kv-type", "q8_0").returncode == 0
    try:
        out = edged(hw_daemon, "hw", "--model", "smollm2", "--calibrate", "--json")
        assert out.returncode == 0, out.stderr
        cals = {c["backend"]: c for c in json.loads(out.stdout)["calibrations"]}
        q8 = cals["llama.cpp"]
        assert q8["kv_type"] == "q8_0" and q8["fidelity"]["measure"] == "logits", q8
        assert q8["fidelity"]["reference"] == f16["llama.cpp"]["fidelity"]["reference"]
        assert q8["fidelity"]["mean_kl"] != f16["llama.cpp"]["fidelity"]["mean_kl"]
        for name, c in cals.items():
            if name != "llama.cpp":  # no q8_0 there: measured with their own cache
                assert c["kv_type"] == "f16", name
        text = edged(hw_daemon, "hw", "--model", "smollm2").stdout
        assert "on cpu, q8_0 KV cache: decode" in text
    finally:
        assert edged(hw_daemon, "config", "smollm2", "--kv-type", "auto").returncode == 0
    again = json.loads(edged(hw_daemon, "hw", "--model", "smollm2", "--json").stdout)
    assert {c["backend"]: c for c in again["calibrations"]}["llama.cpp"] == f16["llama.cpp"]
