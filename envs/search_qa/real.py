"""Real QA data and passage corpora from local files, read through ``datasets``.

QA rows (FlashRAG / Search-R1 style, JSON lines or parquet): ``question``, ``golden_answers`` (a list or
a string; ``answer`` / ``answers`` / ``reward_model.ground_truth.target`` are accepted instead) and an
optional ``data_source`` (nq, triviaqa, popqa, hotpotqa, 2wikimultihopqa, musique, bamboogle, …).
Corpus rows: ``id`` and either ``contents`` (FlashRAG: ``"Title"\\ntext``) or ``title`` + ``text``.

The shipped sample ``envs/data/real_qa_sample.jsonl`` + ``envs/data/real_corpus_sample.jsonl`` is a small
hand-written set of real-world facts (see ``SAMPLE_QA`` / ``SAMPLE_CORPUS``).
"""
from __future__ import annotations

from pathlib import Path

from envs.search_qa.questions import Question

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SAMPLE_QA = DATA_DIR / "real_qa_sample.jsonl"
SAMPLE_CORPUS = DATA_DIR / "real_corpus_sample.jsonl"

# data_source -> the question kind it mostly holds (our task_type).
SOURCE_KINDS = {"nq": "lookup", "triviaqa": "attribute", "popqa": "attribute", "hotpotqa": "multihop",
                "2wikimultihopqa": "multihop", "2wiki": "multihop", "musique": "multihop",
                "bamboogle": "multihop"}


def _load_rows(path: str | Path):
    import datasets

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    builder = "parquet" if path.suffix == ".parquet" else "json"
    return datasets.load_dataset(builder, data_files=str(path), split="train")


def _answers(row: dict) -> tuple[str, ...]:
    value = row.get("golden_answers")
    if value is None:
        value = row.get("answers", row.get("answer"))
    if value is None and isinstance(row.get("reward_model"), dict):
        value = (row["reward_model"].get("ground_truth") or {}).get("target")
    if value is None:
        raise ValueError("qa_file: a row has no golden_answers / answers / answer field")
    if isinstance(value, str):
        value = [value]
    return tuple(str(v) for v in value)


def load_qa(qa_file: str | Path) -> list[Question]:
    """Questions from a local QA file (JSON lines or parquet), in file order."""
    questions = []
    for i, row in enumerate(_load_rows(qa_file)):
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            raise ValueError(f"qa_file: row {i} has no question")
        source = str(row.get("data_source") or "real")
        kind = row.get("task_type") or SOURCE_KINDS.get(source.lower(), "lookup")
        question = row["question"].strip()
        if question and question[-1] not in "?.":
            question += "?"
        questions.append(Question(question, _answers(row), kind, source, (), ("real", i)))
    if not questions:
        raise ValueError(f"qa_file: no rows in {qa_file}")
    return questions


def load_corpus(corpus_file: str | Path) -> list[dict]:
    """Passages ``{"id", "title", "text"}`` or ``{"id", "contents"}`` from a local corpus file."""
    passages = []
    for i, row in enumerate(_load_rows(corpus_file)):
        if row.get("contents"):
            passages.append({"id": str(row.get("id", i)), "contents": str(row["contents"])})
        elif row.get("text"):
            passages.append({"id": str(row.get("id", i)), "title": str(row.get("title") or ""),
                             "text": str(row["text"])})
        else:
            raise ValueError(f"corpus_file: row {i} has neither contents nor text")
    if not passages:
        raise ValueError(f"corpus_file: no rows in {corpus_file}")
    return passages
