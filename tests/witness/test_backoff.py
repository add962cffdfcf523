"""Retry waits for an unreachable witness stay within their bounds however long it is down."""

from __future__ import annotations

import pytest

from app.config import AuditSettings
from app.services import witnesses


@pytest.mark.parametrize("failures", [1, 2, 9, 1024, 1025, 5000, 10**9])
def test_backoff_is_bounded_after_any_number_of_failures(failures: int) -> None:
    # at 1025 consecutive failures (about three days down at the default cap)
    # 2 ** (failures - 1) overflowed a float: the failure was never recorded and the
    # witness was asked again on every round, with no wait
    audit = AuditSettings(witness_retry_base=2.0, witness_retry_cap=300.0)
    expected = min(300.0, 2.0 * 2.0 ** min(failures - 1, 1000))
    wait = witnesses.backoff(failures, audit)
    assert expected / 2 <= wait <= expected


def test_backoff_doubles_until_the_cap() -> None:
    audit = AuditSettings(witness_retry_base=2.0, witness_retry_cap=300.0)
    assert 1.0 <= witnesses.backoff(1, audit) <= 2.0
    assert 4.0 <= witnesses.backoff(3, audit) <= 8.0
    assert 150.0 <= witnesses.backoff(9, audit) <= 300.0
