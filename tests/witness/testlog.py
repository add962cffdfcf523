"""A transparency log that is not refgate's sequencer: its own key, origin and tree.

It drives the witness the way any C2SP log would: checkpoints (with or
without extension lines) signed as Ed25519 signed notes, RFC 6962
consistency proofs from its own tree, and ``add-checkpoint`` bodies.
"""

from __future__ import annotations

import hashlib

from app.crypto import checkpoint, keys, merkle
from app.crypto.encoding import b64_encode
from app.witness.protocol import request_body


class TestLog:
    __test__ = False  # not a pytest class

    def __init__(self, origin: str = "transparency.example.org/log-7", leaves: int = 64) -> None:
        self.origin = origin
        self.seed = keys.generate_signing_key().seed
        self.leaves = [merkle.leaf_hash(f"entry {i}".encode()) for i in range(leaves)]

    @property
    def vkey(self) -> str:
        return checkpoint.verifier_key(self.origin, keys.sig_public_from_seed(self.seed))

    def nodes(self, leaves: list[bytes] | None = None) -> dict[tuple[int, int], bytes]:
        made, _ = merkle.append_leaves(0, [], self.leaves if leaves is None else leaves)
        return {(lv, ix): h for lv, ix, h in made}

    def root(self, size: int, leaves: list[bytes] | None = None) -> bytes:
        return merkle.root_from_leaf_hashes((self.leaves if leaves is None else leaves)[:size])

    def proof(self, old: int, size: int, leaves: list[bytes] | None = None) -> list[bytes]:
        return merkle.consistency_proof(old, size, self.nodes(leaves))

    def note(
        self,
        size: int,
        *,
        root: bytes | None = None,
        extensions: tuple[str, ...] = (),
        seed: bytes | None = None,
    ) -> str:
        body = f"{self.origin}\n{size}\n{b64_encode(root or self.root(size))}\n"
        body += "".join(line + "\n" for line in extensions)
        return checkpoint.sign_note(body, seed or self.seed, self.origin)

    def submission(self, old: int, size: int, *, extensions: tuple[str, ...] = ()) -> bytes:
        return request_body(old, self.proof(old, size), self.note(size, extensions=extensions))

    def forked_leaves(self, at: int) -> list[bytes]:
        """The same log with entry ``at`` rewritten."""
        forked = list(self.leaves)
        forked[at] = merkle.leaf_hash(hashlib.sha256(b"rewritten").digest())
        return forked
