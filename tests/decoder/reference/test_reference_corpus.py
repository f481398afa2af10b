"""Reading the chatterbot-corpus dialogs without a YAML library, and the stdlib code segment."""

from __future__ import annotations

import yaml

from decoder.reference.corpus import (
    CHATTERBOT_LANGUAGES,
    chatterbot_data_dir,
    code_documents,
    dialog_documents,
    parse_conversations,
    split,
)


def test_parser_agrees_with_pyyaml_on_every_corpus_file() -> None:
    files = sorted(chatterbot_data_dir().glob("*/*.yml"))
    assert len(files) > 100
    compared = 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        expected = yaml.safe_load(text).get("conversations", [])
        parsed = parse_conversations(text)
        assert len(parsed) == len(expected), path
        for ours, theirs in zip(parsed, expected, strict=True):
            if isinstance(theirs, str):  # a malformed entry; we read it as a one-turn start
                continue
            assert [turn.strip() for turn in ours] == [turn.strip() for turn in theirs], path
            compared += len(theirs)
    assert compared > 15_000


def test_parser_handles_quotes_and_block_scalars() -> None:
    text = (
        "categories:\n- demo\nconversations:\n"
        "- - 'it''s quoted\n    and folded'\n  - plain\n    continued\n"
        '- - "double \\"escaped\\""\n  - |\n    def f():\n        return 1\n'
    )
    assert parse_conversations(text) == [
        ["it's quoted and folded", "plain continued"],
        ['double "escaped"', "def f():\n    return 1\n"],
    ]


def test_documents_are_chats_split_deterministically() -> None:
    english = dialog_documents("en")
    assert english[0].chat[0]["role"] == "user" and english[0].chat[1]["role"] == "assistant"
    train, heldout = split(english)
    assert 0 < len(heldout) < len(train)
    assert split(dialog_documents("en")) == (train, heldout)
    chinese = dialog_documents("zh")
    assert any("你好" in content for document in chinese for _, content in document.messages)
    assert {"en", "zh", "ja"} <= set(CHATTERBOT_LANGUAGES)


def test_code_documents_continue_stdlib_source() -> None:
    documents = code_documents(30_000)
    assert documents
    assert all(d.language == "code" and len(d.messages) == 2 for d in documents)
    assert any("def " in d.messages[1][1] for d in documents)
