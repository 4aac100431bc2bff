"""Teacher-forced logits from a converted ONNX folder (``OnnxTeacherForced``),
measured against llama.cpp on the same GGUF, with the real SmolLM2 and a real
``Models.Convert``-equivalent conversion (``convert_to_onnx`` on a cloned store,
its worker in a child process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edged.backends.fidelity import eval_text, measure
from edged.backends.llamacpp.fidelity import LlamaTeacherForced, Side, tokenize
from edged.backends.onnx.fidelity import OnnxTeacherForced
from edged.common.model_facts import FORMAT_GGUF, FORMAT_ONNX
from edged.models_registry.convert import convert_to_onnx
from edged.models_registry.store import Store
from harness.daemon import clone_store

pytestmark = pytest.mark.model

# Tokens of the evaluation text compared here (bench.fidelity measures all of it).
FIDELITY_TOKENS = 512
WINDOW = 256


class Converted:
    def __init__(self, gguf: Path, onnx: Path) -> None:
        self.gguf = str(gguf)
        self.onnx = str(onnx)


@pytest.fixture(scope="module")
def smollm2_onnx(tmp_path_factory: pytest.TempPathFactory, smollm2_store: Path) -> Converted:
    """SmolLM2's GGUF and the ONNX folder ``edged convert smollm2 --to onnx`` makes."""
    data = tmp_path_factory.mktemp("onnx-fidelity") / "data"
    clone_store(smollm2_store, data)
    store = Store(data / "models")
    _, manifest = convert_to_onnx(store, "smollm2")
    gguf, onnx = manifest.variant(FORMAT_GGUF), manifest.variant(FORMAT_ONNX)
    assert gguf is not None and onnx is not None
    return Converted(store.materialize(manifest, gguf), store.materialize(manifest, onnx))


def test_onnx_logits_match_the_generator_and_ignore_the_batch(smollm2_onnx: Converted) -> None:
    import onnxruntime_genai as og

    tokens = tokenize(smollm2_onnx.gguf, eval_text())[:80]
    source = OnnxTeacherForced(smollm2_onnx.onnx, window=WINDOW, batch=WINDOW, threads=2)
    try:
        assert source.n_vocab() == 49152
        whole = next(source.logits(tokens, 128))
        assert whole.shape == (80, 49152)
        # blocks of 32 rows attend to the KV cache the earlier blocks returned
        blocks = list(source.logits(tokens, 32))
        assert [len(b) for b in blocks] == [32, 32, 16]
        np.testing.assert_allclose(np.concatenate(blocks), whole, atol=2e-3)
    finally:
        source.close()
    # onnxruntime-genai's own Generator reads the same graph: the same logits
    model = og.Model(smollm2_onnx.onnx)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=WINDOW)
    gen = og.Generator(model, params)
    gen.append_tokens(tokens)
    theirs = np.asarray(gen.get_output("logits")).reshape(-1, 49152)
    np.testing.assert_allclose(theirs[-1], whole[-1], atol=2e-3)
    assert int(theirs[-1].argmax()) == int(whole[-1].argmax())


def test_onnx_fidelity_against_llama_cpp(smollm2_onnx: Converted) -> None:
    tokens = tokenize(smollm2_onnx.gguf, eval_text())[:FIDELITY_TOKENS]
    ref = LlamaTeacherForced(Side(smollm2_onnx.gguf), window=WINDOW, batch=128, threads=2)
    cand = OnnxTeacherForced(smollm2_onnx.onnx, window=WINDOW, batch=128, threads=2)
    try:
        got = measure(ref, cand, tokens, window=WINDOW, batch=128)
    finally:
        cand.close()
        ref.close()
    print("llama.cpp vs onnx:", got)
    assert got.tokens == FIDELITY_TOKENS - 1
    # the same model: far better than chance, and not the identity
    assert 0.5 < got.agreement < 1.0
    assert 0.0 < got.mean_kl < 1.0
