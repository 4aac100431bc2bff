"""KV cache quantization on llama.cpp with the real SmolLM2: a q8_0 cache still
answers, takes about half the bytes per session, shows in ``edged ps``, and a
per-model setting reloads the model with its own type; its fidelity against the
f16 cache is measured teacher-forced over edged's evaluation text."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.backends.fidelity import eval_text
from edged.backends.llamacpp.fidelity import Side, measure, tokenize
from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, clone_store, start_daemon
from tests.integration.helpers import collect
from tests.integration.test_http_metrics import scrape, value

pytestmark = pytest.mark.model

# Tokens of the evaluation text the real fidelity test compares (the whole text
# is about 2,500 SmolLM2 tokens; bench.fidelity measures all of it).
FIDELITY_TOKENS = 1024


def ask(d: Daemon) -> str:
    """A greedy completion (raw prompt, as `edged run` pipes it), after one session
    turn (whose KV the worker then holds resident)."""
    sid = d.sessions.Create(pb.CreateSessionRequest(model="smollm2"), timeout=30).id
    turn = pb.SendRequest(
        session_id=sid,
        content="My cat is called Biscuit. What is my cat called?",
        sampling=pb.SamplingParams(temperature=0.0, max_tokens=16),
    )
    collect(d.sessions.Send(turn, timeout=120))
    req = pb.GenerateRequest(
        model="smollm2",
        prompt="The capital of France is",
        sampling=pb.SamplingParams(temperature=0.0, max_tokens=8),
    )
    return collect(d.inference.Generate(req, timeout=120))[0]


def loaded(d: Daemon) -> pb.LoadedModel:
    (m,) = d.models.ListLoaded(pb.ListLoadedRequest(), timeout=30).models
    return m


def resident_kv_bytes(d: Daemon) -> float:
    return value(
        scrape(d.http_url)["edged_session_kv_bytes"], "edged_session_kv_bytes", tier="resident"
    )


def test_q8_0_kv_answers_with_half_the_bytes(tmp_path: Path, smollm2_store: Path) -> None:
    clone_store(smollm2_store, tmp_path / "data")
    d = start_daemon(tmp_path, EDGED_KV_TYPE="q8_0")
    try:
        assert "Paris" in ask(d)
        q8 = loaded(d)
        assert q8.kv_type == "q8_0"
        assert list(q8.capabilities.kv_types) == ["f16", "q8_0", "q4_0"]
        q8_bytes = resident_kv_bytes(d)
        # edged show sizes the KV as the load gets it, and says which type
        q8_show = d.models.Show(pb.ModelRef(model="smollm2"), timeout=60)
        assert q8_show.memory.kv_type == "q8_0"
        chosen = next(b for b in q8_show.backends if b.available)
        assert chosen.backend == "llama.cpp" and any(" as q8_0" in r for r in chosen.reasons)

        # the model's own setting wins over EDGED_KV_TYPE: the next request reloads it
        d.models.Configure(
            pb.ConfigureModelRequest(model="smollm2", settings=pb.ModelSettings(kv_type="f16")),
            timeout=30,
        )
        shown = d.models.Show(pb.ModelRef(model="smollm2"), timeout=30)
        assert shown.settings.kv_type == "f16" and shown.memory.kv_type == "f16"
        assert q8_show.memory.kv_bytes < shown.memory.kv_bytes
        assert "Paris" in ask(d)
        f16 = loaded(d)
        assert f16.kv_type == "f16" and f16.pid != q8.pid
        f16_bytes = resident_kv_bytes(d)
    finally:
        d.stop()
    # one session of the same prompt each: q8_0 blocks are 34 bytes per 32 values
    assert 0.45 < q8_bytes / f16_bytes < 0.6, (q8_bytes, f16_bytes)
    assert q8.memory.kv_bytes == int(f16.memory.kv_bytes * 34 / 64)


def _blob(store: Path) -> str:
    (blob,) = (p for p in (store / "models" / "blobs").iterdir() if p.stat().st_size > 50 << 20)
    return str(blob)


def test_kv_fidelity_against_f16(smollm2_store: Path) -> None:
    path = _blob(smollm2_store)
    tokens = tokenize(path, eval_text())[:FIDELITY_TOKENS]
    ref = Side(path, "f16")
    same = measure(ref, Side(path, "f16"), tokens, window=512, threads=2)
    assert same.tokens == FIDELITY_TOKENS - 1
    assert same.agreement == 1.0 and same.mean_kl < 1e-6
    assert same.perplexity_candidate == pytest.approx(same.perplexity_reference)
    q8 = measure(ref, Side(path, "q8_0"), tokens, window=512, threads=2)
    print("f16 vs q8_0:", q8)
    # the bar is 0.98; see the report for the measured figures
    assert q8.agreement >= 0.95
    assert q8.mean_kl < 0.02
    assert q8.perplexity_candidate == pytest.approx(q8.perplexity_reference, rel=0.02)
