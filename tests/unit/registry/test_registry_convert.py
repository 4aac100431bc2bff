"""GGUF -> ONNX conversion: the orchestration with fake workers, and the real thing."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edged.common.errors import Cancelled, FailedPrecondition, ModelNotFound
from edged.models_registry import (
    Manifest,
    ManifestFile,
    ModelRef,
    PullProgress,
    Store,
    Variant,
    convert,
    convert_to_onnx,
    pull,
)
from edged.models_registry.convert import ConversionFailed

_REAL_ARGV = convert.worker_argv

# A stand-in for convert_worker: same command line, same protocol.
FAKE_WORKER = textwrap.dedent(
    """
    import argparse, json, os, pathlib, sys, time
    p = argparse.ArgumentParser()
    for a in ("--gguf", "--work", "--out", "--hf-architecture"):
        p.add_argument(a)
    args = p.parse_args(sys.argv[2:])
    mode = sys.argv[1]
    def send(**m):
        print(json.dumps(m), flush=True)
    send(status="dequantizing the GGUF to F16", completed=1, total=2)
    print("builder noise on stderr 50%|#####", file=sys.stderr, flush=True)
    send(status="building the int4 ONNX model")
    pathlib.Path(args.work, "gguf-seen").write_text(args.gguf + " " + args.hf_architecture)
    if mode == "fail":
        print("Traceback (most recent call last):", file=sys.stderr)
        print('  File "/opt/lib/builder.py", line 1, in <module>', file=sys.stderr)
        print("ValueError: unsupported tensor in /home/someone/secret/model.gguf", file=sys.stderr)
        send(error="ValueError: unsupported tensor in /home/someone/secret/model.gguf")
        sys.exit(3)
    if mode == "crash":
        print("fatal: out of memory", file=sys.stderr, flush=True)
        os._exit(-9 % 256)
    if mode == "sleep":
        send(status="waiting", completed=0, total=0)
        time.sleep(60)
    if mode == "nodone":
        sys.exit(0)
    out = pathlib.Path(args.out)
    (out / "sub").mkdir(parents=True)
    (out / "genai_config.json").write_text(json.dumps(
        {"model": {"type": "llama", "decoder": {"filename": "model.onnx"}}}))
    (out / "model.onnx").write_bytes(b"graph")
    (out / "model.onnx.data").write_bytes(os.urandom(1 << 20))
    (out / "tokenizer.json").write_text("{}")
    (out / "sub" / "x.txt").write_text("x")
    if mode == "hostile":
        os.symlink("/etc/passwd", out / "passwd")
    send(status="checking the ONNX model")
    send(done=True)
    """
)


@pytest.fixture
def gguf_model(store: Store, tmp_path: Path, kit: Any) -> tuple[ModelRef, Manifest]:
    src = tmp_path / "tiny.gguf"
    src.write_bytes(kit.build_gguf())
    return pull(store, str(src), name="tiny")


@pytest.fixture
def fake_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    monkeypatch.setattr(convert, "REQUIRED_MODULES", ())  # no need for the real tools

    def use(mode: str) -> None:
        def argv(gguf: Path, work: Path, out: Path, hf_architecture: str) -> list[str]:
            real = _REAL_ARGV(gguf, work, out, hf_architecture)
            return [sys.executable, str(script), mode, *real[3:]]

        monkeypatch.setattr(convert, "worker_argv", argv)

    return use


def test_the_worker_command() -> None:
    argv = convert.worker_argv(Path("/s/g"), Path("/s/w"), Path("/s/o"), "LlamaForCausalLM")
    assert argv == [
        sys.executable,
        "-m",
        "edged.models_registry.convert_worker",
        *("--gguf", "/s/g", "--work", "/s/w", "--out", "/s/o"),
        *("--hf-architecture", "LlamaForCausalLM"),
    ]


def test_convert_with_a_fake_worker(
    store: Store, gguf_model: tuple[ModelRef, Manifest], fake_worker: Any
) -> None:
    fake_worker("ok")
    ref, before = gguf_model
    events: list[PullProgress] = []
    got_ref, m = convert_to_onnx(store, "tiny", progress=events.append)
    assert got_ref == ref
    assert [v.name for v in m.variants] == ["gguf", "onnx-int4-cpu"]
    v = m.variant("onnx")
    assert v is not None and v.format == "onnx" and v.quantization == "int4"
    assert v.source == f"converted from gguf {before.primary.digest}"
    assert sorted(f.path for f in v.files) == [
        "genai_config.json",
        "model.onnx",
        "model.onnx.data",
        "sub/x.txt",
        "tokenizer.json",
    ]
    assert m.variants[0] == before.variants[0] and m.primary == before.primary
    assert store.get_manifest(ref) == m
    statuses = [e.status for e in events]
    assert statuses[0] == "starting the converter"
    assert PullProgress("dequantizing the GGUF to F16", 1, 2) in events
    assert "building the int4 ONNX model" in statuses and "storing the ONNX model" in statuses
    assert statuses[-1] == "writing manifest"
    assert not any("noise" in s for s in statuses)
    assert list(store.tmp_dir.iterdir()) == []
    assert [p.name for p in store.locks_dir.iterdir()] == ["gc.lock"]
    view = store.materialize(m, v)
    assert (view / "model.onnx").read_bytes() == b"graph"
    # A model with an ONNX variant is returned as it is: no worker runs.
    fake_worker("fail")
    assert convert_to_onnx(store, "tiny:latest") == (ref, m)


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("fail", r"failed \(exit 3\): ValueError: unsupported tensor in <path>/model.gguf"),
        ("crash", r"failed \(exit 247\): log: fatal: out of memory$"),
        ("nodone", r"failed \(exit 0\)"),
        ("hostile", r"output was refused: .*'passwd': it is a symlink to outside"),
    ],
)
def test_a_failed_conversion_leaves_the_store_byte_identical(
    store: Store,
    gguf_model: tuple[ModelRef, Manifest],
    fake_worker: Any,
    kit: Any,
    mode: str,
    match: str,
) -> None:
    fake_worker(mode)
    before = kit.snapshot(store.root)
    with pytest.raises(FailedPrecondition, match=match) as info:
        convert_to_onnx(store, "tiny")
    message = str(info.value)
    assert "/home/someone" not in message and "/opt/lib" not in message
    assert str(store.root) not in message
    assert "Traceback" not in message and "%|" not in message
    if mode == "fail":
        assert isinstance(info.value, ConversionFailed)
        assert "ValueError: unsupported tensor" in message.split("log:")[1]  # the log's tail
    assert kit.snapshot(store.root) == before


def test_a_failure_after_storing_removes_the_new_blobs(
    store: Store,
    gguf_model: tuple[ModelRef, Manifest],
    fake_worker: Any,
    kit: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_worker("ok")
    before = kit.snapshot(store.root)

    def gone(*args: Any, **kwargs: Any) -> Manifest:
        raise ModelNotFound("model 'tiny:latest' was removed while it was being converted")

    monkeypatch.setattr(store, "update_manifest", gone)
    with pytest.raises(ModelNotFound, match="removed while"):
        convert_to_onnx(store, "tiny")
    assert kit.snapshot(store.root) == before


def test_a_model_changed_during_conversion_is_not_touched(
    store: Store,
    gguf_model: tuple[ModelRef, Manifest],
    fake_worker: Any,
    kit: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    fake_worker("ok")
    other = tmp_path / "other.gguf"
    kv = [*kit.default_kv()]
    kv[1] = ("general.name", kit.STRING, "Another")
    other.write_bytes(kit.build_gguf(kv))
    real_import = convert.folder.import_folder

    def import_then_repull(*args: Any, **kwargs: Any) -> Any:
        files = real_import(*args, **kwargs)
        pull(Store(store.root), str(other), name="tiny")  # another client replaces the model
        return files

    monkeypatch.setattr(convert.folder, "import_folder", import_then_repull)
    with pytest.raises(FailedPrecondition, match="changed while it was being converted"):
        convert_to_onnx(store, "tiny")
    m = store.get_manifest(ModelRef("tiny"))
    assert [v.name for v in m.variants] == ["gguf"]
    assert store.gc(grace_s=0) and list(store.tmp_dir.iterdir()) == []


def test_cancel_stops_the_worker(
    store: Store, gguf_model: tuple[ModelRef, Manifest], fake_worker: Any, kit: Any
) -> None:
    fake_worker("sleep")
    before = kit.snapshot(store.root)
    cancel = threading.Event()

    def progress(p: PullProgress) -> None:
        if p.status == "waiting":
            cancel.set()

    started = time.monotonic()
    with pytest.raises(Cancelled):
        convert_to_onnx(store, "tiny", progress=progress, cancel=cancel)
    assert time.monotonic() - started < 20
    assert kit.snapshot(store.root) == before


def test_a_slow_worker_times_out(
    store: Store, gguf_model: tuple[ModelRef, Manifest], fake_worker: Any, kit: Any
) -> None:
    fake_worker("sleep")
    before = kit.snapshot(store.root)
    with pytest.raises(Exception, match="took longer than 1 s"):
        convert_to_onnx(store, "tiny", timeout=1.0)
    assert kit.snapshot(store.root) == before


def test_missing_tools_give_the_clear_error(
    store: Store,
    gguf_model: tuple[ModelRef, Manifest],
    kit: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(convert, "REQUIRED_MODULES", ("gguf", "edged_no_such_module_xyz"))

    def must_not_run(*args: Any) -> list[str]:
        raise AssertionError("the worker must not start")

    monkeypatch.setattr(convert, "worker_argv", must_not_run)
    before = kit.snapshot(store.root)
    with pytest.raises(FailedPrecondition) as info:
        convert_to_onnx(store, "tiny")
    assert str(info.value) == (
        "converting to ONNX needs the convert extra: pip install 'edged[convert]'"
    )
    assert kit.snapshot(store.root) == before


def test_what_cannot_be_converted(store: Store, tmp_path: Path, kit: Any, fake_worker: Any) -> None:
    fake_worker("ok")
    kv = [*kit.default_kv()]
    kv[0] = ("general.architecture", kit.STRING, "bert")
    src = tmp_path / "bert.gguf"
    src.write_bytes(kit.build_gguf(kv))
    pull(store, str(src), name="bert")
    with pytest.raises(FailedPrecondition, match=r"architecture 'bert' is not supported"):
        convert_to_onnx(store, "bert")
    with pytest.raises(ModelNotFound):
        convert_to_onnx(store, "nope")
    # An ONNX-only model is returned as it is.
    config = json.dumps({"model": {"decoder": {"filename": "m.onnx"}}}).encode()
    files = [
        ManifestFile("model", store.write_blob([config]), len(config), "genai_config.json"),
        ManifestFile("file", store.write_blob([b"g"]), 1, "m.onnx"),
    ]
    only = Manifest(
        name="only",
        tag="latest",
        variants=(Variant.of("onnx", "onnx", files),),
        source="test",
        created_unix_ms=1,
    )
    store.put_manifest(ModelRef("only"), only)
    assert convert_to_onnx(store, "only") == (ModelRef("only"), only)


# -- the real conversion ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_onnx(
    smollm2_pulled: tuple[Store, Any, Any, list[Any]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Store, ModelRef, Manifest, list[PullProgress], float]:
    """SmolLM2 converted once per session, in a store of its own."""
    try:
        convert.check_tools()
    except FailedPrecondition as exc:
        pytest.skip(str(exc))
    pulled_store, _ref, pulled, _events = smollm2_pulled
    store = Store(tmp_path_factory.mktemp("smollm2-onnx") / "store")
    ref, _ = pull(
        store, str(pulled_store.blob_path(pulled.primary.digest)), name="smollm2:135m-q4_1"
    )
    events: list[PullProgress] = []
    started = time.monotonic()
    _, manifest = convert_to_onnx(store, "smollm2", progress=events.append)
    return store, ref, manifest, events, time.monotonic() - started


@pytest.mark.model
def test_real_conversion_of_smollm2(
    smollm2_onnx: tuple[Store, ModelRef, Manifest, list[PullProgress], float],
) -> None:
    store, ref, manifest, events, seconds = smollm2_onnx
    print(f"\nconverting SmolLM2-135M to int4 ONNX took {seconds:.1f} s")
    v = manifest.variant("onnx")
    assert v is not None and v.name == "onnx-int4-cpu" and v.quantization == "int4"
    paths = {f.path for f in v.files}
    assert {"genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json"} <= paths
    assert "chat_template.jinja" in paths
    assert 40 << 20 < v.size < 200 << 20
    assert store.get_manifest(ref) == manifest
    statuses = [e.status for e in events]
    for phase in (
        "dequantizing the GGUF to F16",
        "writing the model configuration",
        "building the int4 ONNX model",
        "checking the ONNX model",
        "storing the ONNX model",
        "writing manifest",
    ):
        assert phase in statuses
    assert len(set(statuses)) < 12  # phases, not the builder's output
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.model
def test_the_converted_model_generates(
    smollm2_onnx: tuple[Store, ModelRef, Manifest, list[PullProgress], float],
) -> None:
    og = pytest.importorskip("onnxruntime_genai")
    store, _ref, manifest, _events, _seconds = smollm2_onnx
    v = manifest.variant("onnx")
    assert v is not None
    view = store.materialize(manifest, v)
    assert all((view / f.path).is_symlink() for f in v.files)
    model = og.Model(str(view))
    tokenizer = og.Tokenizer(model)
    prompt = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=256, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(tokenizer.encode(prompt))
    tokens: list[int] = []
    while not generator.is_done() and len(tokens) < 12:
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    text = tokenizer.decode(tokens)
    assert len(tokens) >= 3 and text.strip()
    assert "Paris" in text
