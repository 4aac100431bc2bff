"""The API end to end over the unix socket, against the real SmolLM2 model."""

from __future__ import annotations

import grpc
import pytest

from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon
from tests.integration.helpers import chat, collect

pytestmark = pytest.mark.model


def test_streams_a_sensible_answer_with_plausible_stats(daemon: Daemon) -> None:
    req = chat(
        "smollm2",
        "What is the capital of France? Answer in one word.",
        temperature=0.0,
        max_tokens=48,
    )
    text, stats, n_chunks = collect(daemon.inference.Generate(req, timeout=120))
    assert "Paris" in text
    assert n_chunks > 1, "text must stream in several chunks"
    assert stats.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert 10 < stats.prompt_tokens < 100
    assert 0 < stats.completion_tokens <= 48
    assert 0 < stats.time_to_first_token_ms < 60_000
    assert stats.decode_tokens_per_second > 0
    assert stats.backend == "llama.cpp" and stats.device == "cpu"


def test_max_tokens_is_exact(daemon: Daemon) -> None:
    req = pb.GenerateRequest(
        model="smollm2",
        prompt="Once upon a time",
        sampling=pb.SamplingParams(max_tokens=7, temperature=0.0),
    )
    _, stats, _ = collect(daemon.inference.Generate(req, timeout=60))
    assert stats.completion_tokens == 7
    assert stats.finish_reason == pb.FINISH_REASON_LENGTH


def test_stop_sequence_ends_the_stream_and_is_not_sent(daemon: Daemon) -> None:
    base = pb.GenerateRequest(
        model="smollm2",
        prompt="1, 2, 3, 4, 5,",
        sampling=pb.SamplingParams(max_tokens=30, temperature=0.0),
    )
    full, _, _ = collect(daemon.inference.Generate(base, timeout=60))
    assert " 8" in full, f"precondition: the model counts on ({full!r})"
    base.sampling.stop.append(" 8")
    text, stats, _ = collect(daemon.inference.Generate(base, timeout=60))
    assert stats.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert stats.stop_sequence == " 8"
    assert " 8" not in text
    assert text == full[: full.index(" 8")]


def test_temperature_zero_is_deterministic(daemon: Daemon) -> None:
    req = chat("smollm2", "Name three colors.", temperature=0.0, max_tokens=24)
    a, _, _ = collect(daemon.inference.Generate(req, timeout=60))
    b, _, _ = collect(daemon.inference.Generate(req, timeout=60))
    assert a == b and a


def test_seed_reproduces_sampled_output(daemon: Daemon) -> None:
    def run(seed: int) -> str:
        req = chat(
            "smollm2",
            "Write a short poem about the sea.",
            temperature=1.0,
            seed=seed,
            max_tokens=32,
        )
        return collect(daemon.inference.Generate(req, timeout=60))[0]

    first = run(1234)
    assert run(1234) == first
    assert any(run(s) != first for s in (1, 2, 3)), "different seeds should differ"


def test_prompt_completion_mode(daemon: Daemon) -> None:
    req = pb.GenerateRequest(
        model="smollm2",
        prompt="The capital of France is",
        sampling=pb.SamplingParams(max_tokens=8, temperature=0.0),
    )
    text, stats, _ = collect(daemon.inference.Generate(req, timeout=60))
    assert "Paris" in text
    assert stats.prompt_tokens == 5


def test_concurrent_streams_share_the_worker(daemon: Daemon) -> None:
    """Four streams at once on one worker; each gets its own answer, none another's.

    (Batched decoding is not bit-identical to a lone stream in llama.cpp, so the
    check is on content, not on exact equality with solo runs.)
    """
    import concurrent.futures

    words = ["elephant", "volcano", "saxophone", "umbrella"]
    prompts = [f"Word: {w}\nWord: {w}\nWord: {w}\nWord:" for w in words]

    def one(prompt: str) -> tuple[str, pb.GenerationStats, int]:
        req = pb.GenerateRequest(
            model="smollm2",
            prompt=prompt,
            sampling=pb.SamplingParams(temperature=0.0, max_tokens=6),
        )
        return collect(daemon.inference.Generate(req, timeout=120))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, prompts))
    for word, (text, stats, _) in zip(words, results, strict=True):
        assert word in text.lower(), (word, text)
        assert not any(w in text.lower() for w in words if w != word), (word, text)
        assert stats.completion_tokens > 0
    loaded = daemon.models.ListLoaded(pb.ListLoadedRequest(), timeout=10).models
    assert len(loaded) == 1 and loaded[0].backend == "llama.cpp"


def test_cancel_mid_stream_frees_the_request(daemon: Daemon) -> None:
    # sampled, but seeded (an unseeded draw could end the story before the cancel),
    # and one message per token, so the cancel lands after three tokens
    req = chat("smollm2", "Tell me a very long story.", temperature=0.8, max_tokens=2000, seed=7)
    req.stream_interval_ms = 0
    call = daemon.inference.Generate(req, timeout=120)
    for got, _ in enumerate(call, start=1):
        if got == 3:
            call.cancel()
            break
    with pytest.raises(grpc.RpcError) as err:
        next(iter(call))
    assert err.value.code() == grpc.StatusCode.CANCELLED
    # the worker is still healthy and free: a new request completes normally
    _, stats, _ = collect(
        daemon.inference.Generate(
            chat("smollm2", "Say hi.", temperature=0.0, max_tokens=8), timeout=60
        )
    )
    assert stats.completion_tokens > 0
    loaded = daemon.models.ListLoaded(pb.ListLoadedRequest(), timeout=10).models
    assert loaded[0].active_requests == 0


def test_system_version_and_hardware(daemon: Daemon) -> None:
    v = daemon.system.Version(pb.VersionRequest(), timeout=10)
    assert v.api == "edged.v1" and v.version
    hw = daemon.system.Hardware(pb.HardwareRequest(), timeout=10)
    assert hw.cpu_threads >= 1 and hw.memory_total_bytes > 0
    assert hw.backends[0].backend == "llama.cpp" and hw.backends[0].available
    assert hw.backends[0].reasons


def test_stream_interval_trades_chunks_for_fewer_messages(daemon: Daemon) -> None:
    def run(**interval: int) -> tuple[str, pb.GenerationStats, int]:
        req = pb.GenerateRequest(
            model="smollm2",
            prompt="Once upon a time",
            sampling=pb.SamplingParams(max_tokens=40, temperature=0.0),
            **interval,  # type: ignore[arg-type]
        )
        return collect(daemon.inference.Generate(req, timeout=120))

    every_text, every_stats, every_n = run(stream_interval_ms=0)
    held_text, held_stats, held_n = run(stream_interval_ms=10_000)
    _, default_stats, default_n = run()
    assert every_stats.completion_tokens == held_stats.completion_tokens == 40
    assert held_text == every_text
    # 0: a chunk per token (a token ending mid-character waits for the next)
    assert every_n >= every_stats.completion_tokens - 3
    # 10 s: the first text at once, the rest with the end
    assert held_n == 2
    assert held_stats.time_to_first_token_ms < 0.5 * held_stats.total_ms
    # the default (100 ms) holds text between the two
    assert 2 <= default_n < default_stats.completion_tokens


def test_stream_interval_over_ten_seconds_is_refused(daemon: Daemon) -> None:
    req = pb.GenerateRequest(model="smollm2", prompt="hi", stream_interval_ms=10_001)
    with pytest.raises(grpc.RpcError) as err:
        collect(daemon.inference.Generate(req, timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "stream_interval_ms" in (err.value.details() or "")
