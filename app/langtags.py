"""BCP 47 language tags (RFC 5646): well-formedness, case, and matching prefixes.

Pure Python, no dependencies: the server validates the ``languages`` of a
directory service and the ``language`` filter with it, and the CLI checks its
``--language`` before asking.

``normalize(tag)`` accepts a tag only if it is *well-formed* (the RFC 5646
section 2.1 grammar, or one of the grandfathered tags of section 2.2.8) and
has no repeated variant or extension singleton (section 2.2.5 and 2.2.6
make those invalid); it returns the tag in the recommended case (section
2.1.1: language lowercase, script titlecase, region uppercase). Whether each
subtag is in the IANA registry is not checked: the registry changes, and a
tag like ``es-419`` or ``zh-Hant-TW`` is what a caseworker will type.

``prefixes(tag)`` are the language ranges that match a tag under RFC 4647
basic filtering (``es`` matches ``es`` and ``es-MX``), lowercased: the
directory stores them so that a language filter is one indexed equality.
"""

from __future__ import annotations

import re

MAX_LENGTH = 63

_ALNUM = "[a-z0-9]"
_LANGTAG = re.compile(
    rf"""
    (?P<language>[a-z]{{2,3}}(?:-[a-z]{{3}}){{0,3}}|[a-z]{{4}}|[a-z]{{5,8}})
    (?:-(?P<script>[a-z]{{4}}))?
    (?:-(?P<region>[a-z]{{2}}|[0-9]{{3}}))?
    (?P<variants>(?:-(?:{_ALNUM}{{5,8}}|[0-9]{_ALNUM}{{3}}))*)
    (?P<extensions>(?:-[0-9a-wy-z](?:-{_ALNUM}{{2,8}})+)*)
    (?:-(?P<private>x(?:-{_ALNUM}{{1,8}})+))?
    """,
    re.VERBOSE,
)
_PRIVATE_USE = re.compile(rf"x(?:-{_ALNUM}{{1,8}})+")
GRANDFATHERED = frozenset({
    "en-gb-oed", "i-ami", "i-bnn", "i-default", "i-enochian", "i-hak", "i-klingon", "i-lux",
    "i-mingo", "i-navajo", "i-pwn", "i-tao", "i-tay", "i-tsu", "sgn-be-fr", "sgn-be-nl",
    "sgn-ch-de", "art-lojban", "cel-gaulish", "no-bok", "no-nyn", "zh-guoyu", "zh-hakka",
    "zh-min", "zh-min-nan", "zh-xiang",
})


class LanguageTagError(ValueError):
    """Not a well-formed BCP 47 language tag."""


def _refuse(tag: str, why: str) -> LanguageTagError:
    shown = tag if len(tag) <= MAX_LENGTH else tag[:MAX_LENGTH] + "…"
    return LanguageTagError(
        f"{shown!r} is not a BCP 47 language tag ({why}); use tags like en, es, es-MX, "
        "zh-Hant or fa-AF"
    )


def _cased(subtags: list[str]) -> str:
    """RFC 5646 section 2.1.1 case: after the first subtag, a 2-letter subtag is a region
    (upper), a 4-letter one a script (title); everything after a singleton stays lower."""
    out = [subtags[0]]
    after_singleton = False
    for sub in subtags[1:]:
        if len(sub) == 1:
            after_singleton = True
        if after_singleton:
            out.append(sub)
        elif len(sub) == 2:
            out.append(sub.upper())
        elif len(sub) == 4 and sub.isalpha():
            out.append(sub.title())
        else:
            out.append(sub)
    return "-".join(out)


def normalize(tag: str) -> str:
    """The tag in its recommended case, or :class:`LanguageTagError`."""
    if not isinstance(tag, str) or not tag:
        raise _refuse(str(tag), "empty")
    if len(tag) > MAX_LENGTH:
        raise _refuse(tag, f"longer than {MAX_LENGTH} characters")
    if not tag.isascii():
        raise _refuse(tag, "only ASCII letters, digits and hyphens")
    lower = tag.lower()
    if lower in GRANDFATHERED:
        return _cased(lower.split("-"))
    if _PRIVATE_USE.fullmatch(lower):
        return lower
    match = _LANGTAG.fullmatch(lower)
    if match is None:
        raise _refuse(tag, "not well-formed")
    variants = [v for v in match["variants"].split("-") if v]
    if len(set(variants)) != len(variants):
        raise _refuse(tag, "a variant is repeated")
    singletons = [s for s in match["extensions"].split("-") if len(s) == 1]
    if len(set(singletons)) != len(singletons):
        raise _refuse(tag, "an extension is repeated")
    return _cased(lower.split("-"))


def prefixes(tag: str) -> list[str]:
    """Every language range that matches ``tag`` by RFC 4647 basic filtering, lowercased
    (the tag itself included), shortest first."""
    subtags = normalize(tag).lower().split("-")
    return ["-".join(subtags[: i + 1]) for i in range(len(subtags))]
