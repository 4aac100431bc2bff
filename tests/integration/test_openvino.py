"""The OpenVINO backend end to end: the real SmolLM2 GGUF through a real daemon.

Also checks the engine's cached-token figure against the pipeline itself: with
one token per step, the steps before a request's first output token are the
prompt tokens the pipeline evaluated, so the rest came from its prefix cache.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edged.backends.openvino.engine import BLOCK_SIZE, ov_device, reused_prefix
from edged.common.errors import InvalidArgument
from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, clone_store, start_daemon
from tests.integration.helpers import collect

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(
        importlib.util.find_spec("openvino_genai") is None,
        reason="the openvino extra is not installed (./install.sh --openvino)",
    ),
]


@pytest.fixture(scope="module")
def ovd(tmp_path_factory: pytest.TempPathFactory, smollm2_store: Path) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("openvino")
    clone_store(smollm2_store, root / "data")
    d = start_daemon(root, EDGED_PARALLEL="4")
    yield d
    d.stop()


def send(d: Daemon, sid: str, text: str, n: int = 24) -> tuple[str, pb.GenerationStats]:
    req = pb.SendRequest(
        session_id=sid, content=text, sampling=pb.SamplingParams(temperature=0.0, max_tokens=n)
    )
    out, stats, _ = collect(d.sessions.Send(req, timeout=120))
    return out, stats


def test_generate_runs_the_gguf_on_openvino(ovd: Daemon) -> None:
    req = pb.GenerateRequest(
        model="smollm2",
        backend="openvino",
        sampling=pb.SamplingParams(temperature=0.0, max_tokens=24),
    )
    req.chat.messages.append(pb.ChatMessage(role="user", content="What is the capital of France?"))
    text, stats, _ = collect(ovd.inference.Generate(req, timeout=120))
    assert "Paris" in text
    assert stats.backend == "openvino" and stats.device == "cpu"
    loaded = [
        m
        for m in ovd.models.ListLoaded(pb.ListLoadedRequest(), timeout=10).models
        if m.backend == "openvino"
    ]
    assert loaded and loaded[0].capabilities.batching
    # the scheduler hands the backend <EDGED_CACHE_DIR>/openvino: compiled model blobs land there
    cache = Path(ovd.env["EDGED_CACHE_DIR"]) / "openvino"
    assert any(p.suffix == ".blob" for p in cache.iterdir()), list(cache.iterdir())


def test_second_turn_reuses_the_prefix_cache(ovd: Daemon) -> None:
    sid = ovd.sessions.Create(
        pb.CreateSessionRequest(model="smollm2", backend="openvino"), timeout=30
    ).id
    _, st1 = send(ovd, sid, "The secret word is saxophone.", 16)
    assert st1.cached_prompt_tokens == 0
    reply, st2 = send(ovd, sid, "What is the secret word?")
    assert "saxophone" in reply.lower()
    assert st2.kv_source == "resident"
    assert st2.cached_prompt_tokens >= st1.prompt_tokens
    assert st2.cached_prompt_tokens < st2.prompt_tokens


def test_concurrent_sessions_keep_their_own_facts(ovd: Daemon) -> None:
    facts = {"saxophone": "The secret word is saxophone.", "volcano": "The secret word is volcano."}
    sids = {
        word: ovd.sessions.Create(
            pb.CreateSessionRequest(model="smollm2", backend="openvino"), timeout=30
        ).id
        for word in facts
    }

    def converse(word: str) -> str:
        send(ovd, sids[word], facts[word], 16)
        return send(ovd, sids[word], "What is the secret word?")[0]

    with ThreadPoolExecutor(2) as pool:
        replies = dict(zip(facts, pool.map(converse, facts), strict=True))
    assert "saxophone" in replies["saxophone"].lower()
    assert "volcano" not in replies["saxophone"].lower()
    assert "volcano" in replies["volcano"].lower()
    assert "saxophone" not in replies["volcano"].lower()


def test_device_names() -> None:
    assert ov_device("cpu") == "CPU"
    assert ov_device("gpu.1") == "GPU.1"
    assert ov_device("npu") == "NPU"
    with pytest.raises(InvalidArgument):
        ov_device("cuda")


def test_cached_token_rule_matches_the_pipeline(tmp_path: Path, smollm2_store: Path) -> None:
    """reused_prefix() against prefill steps counted in the real pipeline."""
    import numpy as np
    import openvino as ov
    import openvino_genai as og

    blobs = (smollm2_store / "models" / "blobs").glob("sha256-*")
    gguf = next(p for p in blobs if p.stat().st_size > 50 << 20)  # the GGUF, not the manifest
    link = tmp_path / "model.gguf"
    link.symlink_to(gguf)
    sched = og.SchedulerConfig()
    sched.enable_prefix_caching = True
    sched.cache_size = 1
    sched.max_num_batched_tokens = 1  # one prompt token per step
    pipe = og.ContinuousBatchingPipeline(str(link), sched, "CPU", {"INFERENCE_NUM_THREADS": 2})
    tok = pipe.get_tokenizer()

    def evaluated(ids: list[int], n: int = 4) -> tuple[int, list[int]]:
        cfg = pipe.get_config()
        cfg.max_new_tokens = n
        cfg.do_sample = False
        h = pipe.add_request(len(ids), ov.Tensor(np.array([ids], dtype=np.int64)), cfg)
        steps, first, out = 0, 0, []
        while pipe.has_non_finished_requests():
            pipe.step()
            steps += 1
            if h.can_read():
                for o in h.read().values():
                    out.extend(int(t) for t in o.generated_ids)
                first = first or steps
        return first, out

    text = "<|im_start|>user\n" + "The secret word is saxophone. " * 5 + "<|im_end|>\n"
    a = [int(t) for t in tok.encode(text, add_special_tokens=False).input_ids.data[0]]
    steps, out = evaluated(a, 8)
    assert steps == len(a)  # nothing cached yet
    seen = a + out[:-1]
    block = BLOCK_SIZE["CPU"]
    cases: list[list[int]] = [
        [*seen, 5, 6, 7],  # the whole earlier sequence, then new tokens
        [*a[: block + 1], 5, 6, 7],  # one whole block shared
        [*a[: block - 1], 5, 6, 7],  # less than a block shared
    ]
    earlier: list[Any] = [seen]
    for prompt in cases:
        steps, out = evaluated(prompt)
        cached = max(reused_prefix(prompt, s, block) for s in earlier)
        assert len(prompt) - steps == cached, (len(prompt), steps, cached)
        earlier.append(prompt + out[:-1])
