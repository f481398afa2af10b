"""Reference models built offline from real text (a small multilingual target and one draft of
each registered kind) for the demo, the tests and the benchmarks: a fixture factory, not part of
the instrument. The runtime decoder does not import it (the import contract in pyproject.toml).

- `decoder.reference.build`: `build_reference(size, out_dir, seed)`, the specs and the report;
- `decoder.reference.corpus`: the real text (chatterbot-corpus dialogs, Python stdlib source).

    python -c "from decoder.reference import build_reference; print(build_reference('tiny', '/tmp/ref'))"
    specwatch models build-reference --size demo
"""

from decoder.reference.build import (
    DRAFT_LANGUAGES,
    REFERENCE_SPECS,
    LanguageScore,
    ReferenceCorpus,
    ReferenceReport,
    ReferenceSizeName,
    ReferenceSpec,
    build_reference,
    encode_documents,
    evaluation_samples,
    load_reference_corpus,
    train_tokenizer,
)
from decoder.reference.corpus import CODE, Document, code_documents, dialog_documents, split

__all__ = [
    "CODE",
    "DRAFT_LANGUAGES",
    "REFERENCE_SPECS",
    "Document",
    "LanguageScore",
    "ReferenceCorpus",
    "ReferenceReport",
    "ReferenceSizeName",
    "ReferenceSpec",
    "build_reference",
    "code_documents",
    "dialog_documents",
    "encode_documents",
    "evaluation_samples",
    "load_reference_corpus",
    "split",
    "train_tokenizer",
]
