"""edged's embeddings against the reference: sentence-transformers on the same
safetensors folder the GGUF variants were converted from (all-MiniLM-L6-v2).

Cosine similarity per sentence >= 0.99 for the f16 and q8_0 GGUF variants, and a
small retrieval task (10 queries over 30 documents) whose top-1 document is the
reference model's for every query."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edged.common.model_facts import FORMAT_SAFETENSORS
from edged.models_registry import Store
from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, clone_store, start_daemon

pytestmark = pytest.mark.model

SENTENCES = [
    "The cat sat on the warm windowsill all afternoon.",
    "Interest rates rose for the third month in a row.",
    "She tuned the violin before the concert began.",
    "The compiler rejected the program because of a missing semicolon.",
    "Heavy rain flooded the streets of the old town.",
    "He ordered a coffee with oat milk and no sugar.",
    "The spacecraft entered orbit around Jupiter.",
    "Photosynthesis turns sunlight into chemical energy.",
    "The football match ended in a goalless draw.",
    "Our flight to Lisbon was delayed by two hours.",
    "The museum displays paintings from the Dutch golden age.",
    "A binary search halves the interval at every step.",
    "The bakery sells fresh bread every morning at six.",
    "Vaccines train the immune system to recognise a virus.",
    "The river freezes over in the coldest weeks of winter.",
    "He forgot his password and had to reset it.",
    "The orchestra played Beethoven's ninth symphony.",
    "Electric cars need fewer moving parts than petrol cars.",
    "The children built a sandcastle near the waves.",
    "hello world",
]

DOCUMENTS = [
    "Paris is the capital of France and home to the Eiffel Tower.",
    "Python is a programming language known for its readable syntax.",
    "The mitochondria is the powerhouse of the cell.",
    "Mount Everest is the highest mountain above sea level.",
    "The Great Barrier Reef is the largest coral reef system in the world.",
    "Bananas are rich in potassium and easy to digest.",
    "The stock market fell sharply after the bank collapsed.",
    "A violin has four strings and is played with a bow.",
    "Penguins are flightless birds that live in the Southern Hemisphere.",
    "The heart pumps blood through the body's arteries and veins.",
    "Git is a version control system for tracking changes in source code.",
    "Tokyo is the most populous metropolitan area in the world.",
    "Coffee beans are roasted seeds of the Coffea plant.",
    "The Moon orbits the Earth roughly every 27 days.",
    "Chess is a strategy board game played on an eight by eight grid.",
    "Solar panels convert sunlight into electricity.",
    "The Amazon rainforest produces a large share of the world's oxygen.",
    "A marathon is a long-distance race of about 42 kilometres.",
    "Bread rises because yeast produces carbon dioxide.",
    "The Roman Empire was ruled from Rome for centuries.",
    "Whales are mammals that breathe air through a blowhole.",
    "A guitar usually has six strings.",
    "Regular exercise lowers the risk of heart disease.",
    "The Sahara is the largest hot desert on Earth.",
    "Vaccination protects people against infectious diseases.",
    "Email spam filters use machine learning to sort messages.",
    "The piano has 88 keys.",
    "Honey never spoils if it is stored properly.",
    "Tea originated in China thousands of years ago.",
    "Lightning is a sudden electrostatic discharge during a storm.",
]

QUERIES = [
    "Which city is the French capital?",
    "What language is easy to read for programmers?",
    "What part of the cell makes energy?",
    "What is the tallest mountain?",
    "Where do penguins live?",
    "How do I track changes to my code?",
    "Why does dough rise?",
    "How many keys does a piano have?",
    "Where does tea come from?",
    "How can solar energy make power?",
]


# Run in a child process: torch and llama.cpp in one process (this test run loads
# llama.cpp in-process elsewhere) fight over their OpenMP runtimes and can crash.
_REFERENCE = """
import json, sys
from sentence_transformers import SentenceTransformer
job = json.load(sys.stdin)
model = SentenceTransformer(job["folder"], device="cpu")
vectors = model.encode(job["texts"], normalize_embeddings=True)
json.dump([[float(x) for x in v] for v in vectors], sys.stdout)
"""


def reference(folder: Path, texts: list[str]) -> np.ndarray:
    """sentence-transformers' normalized embeddings of ``texts``."""
    out = subprocess.run(
        [sys.executable, "-c", _REFERENCE],
        input=json.dumps({"folder": str(folder), "texts": texts}),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return np.asarray(json.loads(out.stdout), dtype=np.float64)


def embed(d: Daemon, model: str, texts: list[str]) -> np.ndarray:
    reply = d.inference.Embed(pb.EmbedRequest(model=model, inputs=texts), timeout=300)
    return np.asarray([list(e.values) for e in reply.embeddings], dtype=np.float64)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory, minilm_store: Path) -> Iterator[Daemon]:
    """A daemon with all-minilm (f16 GGUF) and a copy of it converted to q8_0."""
    root = tmp_path_factory.mktemp("fidelity")
    clone_store(minilm_store, root / "data")
    d = start_daemon(root)
    d.models.Copy(pb.CopyModelRequest(source="all-minilm", destination="minilm-q8"), timeout=60)
    for _ in d.models.Convert(
        pb.ConvertRequest(model="minilm-q8", to="gguf", quant="q8_0"), timeout=600
    ):
        pass
    yield d
    d.stop()


@pytest.fixture(scope="module")
def folder(minilm: Daemon) -> Path:
    """The safetensors folder the GGUF variants were converted from (the store's view)."""
    return safetensors_view(minilm.root / "data" / "models", "all-minilm")


def safetensors_view(models_dir: Path, model: str) -> Path:
    store = Store(models_dir)
    _, manifest = store.resolve(model)
    variant = manifest.variant(FORMAT_SAFETENSORS)
    assert variant is not None, f"{model} has no safetensors variant"
    return store.materialize(manifest, variant)


@pytest.mark.parametrize("model", ["all-minilm", "minilm-q8"])
def test_cosine_against_sentence_transformers(minilm: Daemon, folder: Path, model: str) -> None:
    ref = reference(folder, SENTENCES)
    got = embed(minilm, model, SENTENCES)
    assert got.shape == (20, 384)
    cosines = (ref * got).sum(axis=1) / np.linalg.norm(got, axis=1)
    print(model, "cosine min", float(cosines.min()), "mean", float(cosines.mean()))
    assert all(c >= 0.99 for c in cosines), cosines


@pytest.mark.parametrize("model", ["all-minilm", "minilm-q8"])
def test_retrieval_top1_matches_the_reference(minilm: Daemon, folder: Path, model: str) -> None:
    ref = reference(folder, QUERIES + DOCUMENTS)
    ref_top = (ref[: len(QUERIES)] @ ref[len(QUERIES) :].T).argmax(axis=1)
    got_top = (embed(minilm, model, QUERIES) @ embed(minilm, model, DOCUMENTS).T).argmax(axis=1)
    assert list(got_top) == list(ref_top)
    # and the reference's answers are the ones a person would pick (the task is sound)
    assert [DOCUMENTS[i].split()[0] for i in ref_top[:3]] == ["Paris", "Python", "The"]
