"""The console's TypeScript crypto under Node: type-checked, then the known-answer
vectors of ``tests/vectors/envelope_v2.json`` and tamper cases (``console/test/``)."""

from __future__ import annotations

from tests.console import node


def test_console_crypto_passes_the_envelope_v2_vectors_under_node() -> None:
    with node.exclusive():  # npm test rebuilds dist-test/
        done = node.run([node.npm(), "test", "--silent"])
    assert "# fail 0" in done.stdout
    assert "# pass 0" not in done.stdout
