"""console/src/vocab.ts is generated from app/vocab.py and must be current."""

from __future__ import annotations

from app import vocab, vocab_ts


def test_console_vocabulary_is_current() -> None:
    on_disk = vocab_ts.OUTPUT.read_text()
    assert on_disk == vocab_ts.render(), "run ./dev vocab and commit console/src/vocab.ts"


def test_every_vocabulary_value_reaches_the_console() -> None:
    text = vocab_ts.render()
    assert set(vocab_ts.enums()) == set(vocab_ts.NAMES)
    for enum in vocab_ts.enums():
        const, type_name = vocab_ts.NAMES[enum]
        assert f"export type {type_name} = (typeof {const})[number];" in text
        for member in enum:
            assert f'"{member.value}"' in text, (enum.__name__, member.value)
    assert '"in-progress": ["on-hold", "completed", "failed"] as const,' in text
    assert '"auditor": ["audit:read", "agencies:read"] as const,' in text
    assert vocab.TaskStatus.CANCELLED not in vocab.POSTABLE_STATUSES
