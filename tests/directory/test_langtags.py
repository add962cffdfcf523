"""BCP 47 language tags (RFC 5646): well-formed ones accepted and cased, others refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import langtags


@pytest.mark.parametrize(
    ("tag", "normal"),
    [
        ("en", "en"),
        ("ES", "es"),
        ("es-mx", "es-MX"),
        ("es-419", "es-419"),
        ("zh-hant-tw", "zh-Hant-TW"),
        ("sr-Latn-RS", "sr-Latn-RS"),
        ("fa-AF", "fa-AF"),
        ("zh-yue-HK", "zh-yue-HK"),  # extended language subtag
        ("de-CH-1901", "de-CH-1901"),  # variant
        ("sl-rozaj-biske", "sl-rozaj-biske"),
        ("en-US-u-islamcal", "en-US-u-islamcal"),  # extension
        ("en-a-bbb-x-a-ccc", "en-a-bbb-x-a-ccc"),  # singletons after x are private use
        ("x-whatever", "x-whatever"),
        ("i-klingon", "i-klingon"),  # grandfathered
        ("en-GB-oed", "en-GB-oed"),
    ],
)
def test_well_formed_tags_are_accepted_in_their_recommended_case(tag: str, normal: str) -> None:
    assert langtags.normalize(tag) == normal


@pytest.mark.parametrize(
    "tag",
    [
        "", "e", "en_US", "en-", "-en", "en--US", "english language", "123", "en-US-",
        "de-1901-1901",  # repeated variant
        "en-a-bbb-a-ccc",  # repeated extension
        "en-u",  # singleton without subtag
        "ésp", "en-" + "a" * 9, "a" * 64, "x", "en-x",
    ],
)
def test_malformed_tags_are_refused_with_examples(tag: str) -> None:
    with pytest.raises(langtags.LanguageTagError, match="BCP 47"):
        langtags.normalize(tag)


def test_prefixes_are_the_ranges_that_match_by_basic_filtering() -> None:
    assert langtags.prefixes("zh-Hant-TW") == ["zh", "zh-hant", "zh-hant-tw"]
    assert langtags.prefixes("es") == ["es"]


@given(st.from_regex(r"[a-z]{2,3}(-[A-Z][a-z]{3})?(-[A-Z]{2})?", fullmatch=True))
def test_normalizing_is_idempotent_and_case_insensitive(tag: str) -> None:
    normal = langtags.normalize(tag)
    assert langtags.normalize(normal) == normal
    assert langtags.normalize(tag.swapcase()) == normal
    assert langtags.prefixes(tag)[-1] == normal.lower()
