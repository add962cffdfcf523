"""RFC 6962 / RFC 9162 Merkle tree (SHA-256) for the audit log.

Hashing (RFC 9162 §2.1.1): ``leaf = SHA-256(0x00 || data)``, ``node =
SHA-256(0x01 || left || right)``, and the empty tree's root is ``SHA-256("")``.

Storage model. The log stores only the hashes of *perfect* subtrees, keyed by
``(level, index)``: ``(0, i)`` is leaf ``i`` and ``(l + 1, i)`` is
``node_hash((l, 2i), (l, 2i + 1))``, so ``(l, i)`` covers the leaves
``[i * 2**l, (i + 1) * 2**l)``. A perfect subtree's hash never changes once it
exists, so one stored node serves every later tree size. The hash of any
other range the RFC needs (the root of a non-power-of-two tree, or the
incomplete right-hand sibling in a proof) is rebuilt from the perfect
subtrees of its binary decomposition.

Proofs are therefore built in two steps that bracket a single batch read:
``*_coords`` says which O(log n) nodes are needed, and ``inclusion_proof`` /
``consistency_proof`` assemble the RFC proof from a mapping holding them.

Verification follows RFC 9162 §2.1.3.2 and §2.1.4.2 (the trivial consistency
cases are spelled out in ``verify_consistency``), compares roots in constant
time and answers ``False`` (never raises) for any proof, size, index or hash
that does not check out.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MissingNodeError",
    "RootBuilder",
    "append_leaves",
    "consistency_proof",
    "consistency_proof_coords",
    "frontier_coords",
    "inclusion_proof",
    "inclusion_proof_coords",
    "leaf_hash",
    "node_hash",
    "root_from_frontier",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Length in bytes of every leaf, node and root hash."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root hash of the empty tree (RFC 9162 §2.1.1)."""

Coord = tuple[int, int]
"""``(level, index)`` of a perfect subtree."""


class MissingNodeError(KeyError):
    """A node needed to assemble a proof was not in the supplied mapping."""

    def __init__(self, coord: Coord) -> None:
        super().__init__(coord)
        self.coord = coord

    def __str__(self) -> str:
        level, index = self.coord
        return f"missing Merkle node (level={level}, index={index})"


def leaf_hash(data: bytes) -> bytes:
    """Return ``SHA-256(0x00 || data)``, the RFC 6962 hash of one log entry."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return ``SHA-256(0x01 || left || right)``.

    Both children must be 32-byte hashes; anything else raises ``ValueError``
    rather than producing a plausible-looking but meaningless hash.
    """
    if len(left) != HASH_SIZE or len(right) != HASH_SIZE:
        raise ValueError("child hashes must be 32 bytes")
    return hashlib.sha256(b"\x01" + left + right).digest()


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def _check_size(size: int, what: str = "size") -> None:
    if size < 0:
        raise ValueError(f"{what} must be >= 0, got {size}")


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Hash of a range from its decomposition's subtree hashes, left to right.

    The RFC splits a range at the largest power of two below its size, so the
    leftmost perfect subtree is the left child and the rest is the right one:
    folding from the right reproduces MTH exactly.
    """
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def _range_coords(begin: int, end: int) -> list[Coord]:
    """Perfect subtrees covering ``[begin, end)``, largest (leftmost) first.

    Only valid for the ranges the RFC recursion produces, whose ``begin`` is a
    multiple of the smallest power of two >= ``end - begin``; every block of
    the binary decomposition is then aligned.
    """
    coords: list[Coord] = []
    n = end - begin
    for level in range(n.bit_length() - 1, -1, -1):
        if n >> level & 1:
            coords.append((level, begin >> level))
            begin += 1 << level
    return coords


def frontier_coords(size: int) -> list[Coord]:
    """The perfect subtrees of the binary decomposition of ``size``, left to right.

    Their hashes (the *frontier*) are all that is needed to compute the root
    at ``size`` and to append further leaves. ``len == popcount(size)``.
    """
    _check_size(size)
    return _range_coords(0, size)


def root_from_frontier(frontier: Sequence[bytes]) -> bytes:
    """Root hash of the tree whose frontier (see ``frontier_coords``) is given.

    An empty frontier is the empty tree and yields ``EMPTY_ROOT``.
    """
    for h in frontier:
        _check_hash(h, "frontier hash")
    return _fold(frontier)


class RootBuilder:
    """Streaming MTH: append leaf hashes one at a time, ask for the root at any point.

    Keeps only the frontier (at most one hash per level, O(log n) memory) and
    does amortised O(1) hashing per leaf, so a full verifier can recompute the
    root of a log of any length without holding it in memory.
    """

    __slots__ = ("_levels", "_hashes", "_size")

    def __init__(self) -> None:
        self._levels: list[int] = []
        self._hashes: list[bytes] = []
        self._size = 0

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def frontier(self) -> list[bytes]:
        """Hashes of the subtrees at ``frontier_coords(size)``, left to right."""
        return list(self._hashes)

    def append(self, leaf: bytes) -> None:
        """Append one leaf *hash* (already ``leaf_hash``-ed, 32 bytes)."""
        _check_hash(leaf, "leaf hash")
        self._levels.append(0)
        self._hashes.append(leaf)
        self._size += 1
        while len(self._levels) >= 2 and self._levels[-1] == self._levels[-2]:
            right = self._hashes.pop()
            level = self._levels.pop()
            self._hashes[-1] = node_hash(self._hashes[-1], right)
            self._levels[-1] = level + 1

    def root(self) -> bytes:
        """MTH of the leaves appended so far (``EMPTY_ROOT`` if none)."""
        return _fold(self._hashes)


def root_from_leaf_hashes(leaf_hashes: Iterable[bytes]) -> bytes:
    """MTH (RFC 9162 §2.1.1) of a sequence of leaf hashes, in O(n) time, O(log n) memory."""
    builder = RootBuilder()
    for h in leaf_hashes:
        builder.append(h)
    return builder.root()


def append_leaves(
    size: int, frontier: Sequence[bytes], new_leaf_hashes: Sequence[bytes]
) -> tuple[list[tuple[int, int, bytes]], list[bytes]]:
    """Append leaf hashes to a tree of ``size`` leaves known only by its frontier.

    Returns ``(nodes, new_frontier)``: ``nodes`` lists every perfect subtree
    completed by this batch as ``(level, index, hash)``, the new leaves
    themselves (level 0) included, each exactly once, so storing them keeps
    the node table complete; ``new_frontier`` holds the hashes at
    ``frontier_coords(size + len(new_leaf_hashes))``. Splitting a batch in
    any way yields the same nodes and frontier in total.

    Raises ``ValueError`` if the frontier does not match ``size`` or a hash is
    not 32 bytes.
    """
    _check_size(size)
    coords = frontier_coords(size)
    if len(frontier) != len(coords):
        raise ValueError(
            f"frontier for size {size} must have {len(coords)} hashes, got {len(frontier)}"
        )
    for h in frontier:
        _check_hash(h, "frontier hash")
    stack: list[tuple[int, bytes]] = [
        (level, h) for (level, _), h in zip(coords, frontier, strict=True)
    ]
    nodes: list[tuple[int, int, bytes]] = []
    append = nodes.append
    sha256 = hashlib.sha256
    for offset, leaf in enumerate(new_leaf_hashes):
        if len(leaf) != HASH_SIZE:
            _check_hash(leaf, "leaf hash")
        index = size + offset
        append((0, index, leaf))
        level, right = 0, leaf
        while stack and stack[-1][0] == level:
            left = stack.pop()[1]
            # node_hash inlined (this loop runs about twice per leaf): both children
            # are checked leaves, checked frontier hashes or SHA-256 outputs, so the
            # length check node_hash makes cannot fail here.
            right = sha256(b"\x01" + left + right).digest()
            level += 1
            # The new parent ends at leaf ``index``, so it is node index >> level.
            append((level, index >> level, right))
        stack.append((level, right))
    return nodes, [h for _, h in stack]


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose MTHs form RFC 9162 PATH(index, D[size]), leaf to root."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} out of range for tree size {size}")
    ranges: list[tuple[int, int]] = []
    lo, n, m = 0, size, index
    while n > 1:
        k = 1 << ((n - 1).bit_length() - 1)  # largest power of two < n
        if m < k:
            ranges.append((lo + k, lo + n))
            n = k
        else:
            ranges.append((lo, lo + k))
            lo, n, m = lo + k, n - k, m - k
    ranges.reverse()
    return ranges


def _consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """Leaf ranges whose MTHs form RFC 9162 PROOF(first, D[second]), bottom first.

    Empty for the trivial cases ``first == 0`` and ``first == second``.
    """
    _check_size(first, "first")
    if first > second:
        raise ValueError(f"first size {first} exceeds second size {second}")
    if first == 0 or first == second:
        return []
    ranges: list[tuple[int, int]] = []
    lo, n, m, whole = 0, second, first, True
    while m != n:
        k = 1 << ((n - 1).bit_length() - 1)
        if m <= k:
            ranges.append((lo + k, lo + n))
            n = k
        else:
            ranges.append((lo, lo + k))
            lo, n, m, whole = lo + k, n - k, m - k, False
    if not whole:
        ranges.append((lo, lo + n))
    ranges.reverse()
    return ranges


def _coords_for(ranges: Sequence[tuple[int, int]]) -> list[Coord]:
    return [c for begin, end in ranges for c in _range_coords(begin, end)]


def _assemble(ranges: Sequence[tuple[int, int]], nodes: Mapping[Coord, bytes]) -> list[bytes]:
    proof: list[bytes] = []
    for begin, end in ranges:
        parts: list[bytes] = []
        for coord in _range_coords(begin, end):
            try:
                h = nodes[coord]
            except KeyError:
                raise MissingNodeError(coord) from None
            _check_hash(h, f"node {coord}")
            parts.append(h)
        proof.append(_fold(parts))
    return proof


def inclusion_proof_coords(index: int, size: int) -> list[Coord]:
    """Nodes needed for the inclusion proof of leaf ``index`` in the tree of ``size``.

    At most ``2 * ceil(log2(size))`` coordinates, all within ``[0, size)``.
    Raises ``ValueError`` unless ``0 <= index < size``.
    """
    return _coords_for(_inclusion_ranges(index, size))


def inclusion_proof(index: int, size: int, nodes: Mapping[Coord, bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 inclusion proof (PATH) assembled from stored nodes.

    ``nodes`` must hold at least ``inclusion_proof_coords(index, size)``;
    a missing one raises ``MissingNodeError`` (a ``KeyError``), a malformed
    one or an out-of-range index ``ValueError``.
    """
    return _assemble(_inclusion_ranges(index, size), nodes)


def consistency_proof_coords(first: int, second: int) -> list[Coord]:
    """Nodes needed for the consistency proof between tree sizes ``first`` <= ``second``.

    Empty when ``first == 0`` or ``first == second`` (the proof is empty);
    otherwise at most ``2 * ceil(log2(second))`` coordinates.
    Raises ``ValueError`` unless ``0 <= first <= second``.
    """
    return _coords_for(_consistency_ranges(first, second))


def consistency_proof(first: int, second: int, nodes: Mapping[Coord, bytes]) -> list[bytes]:
    """RFC 9162 §2.1.4.1 consistency proof (PROOF) assembled from stored nodes.

    Same error contract as ``inclusion_proof``.
    """
    return _assemble(_consistency_ranges(first, second), nodes)


def _valid_hashes(*values: bytes) -> bool:
    return all(len(v) == HASH_SIZE for v in values)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``proof`` shows leaf hash ``leaf`` at ``index`` in the tree ``(size, root)``.

    RFC 9162 §2.1.3.2, including its rejection of extra or missing proof
    elements. Returns ``False`` for any malformed input instead of raising.
    """
    if not (0 <= index < size and _valid_hashes(leaf, root, *proof)):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not (fn & 1 or fn == 0):
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(r, root)


def verify_consistency(
    first: int, second: int, proof: Sequence[bytes], first_root: bytes, second_root: bytes
) -> bool:
    """Whether the tree ``(second, second_root)`` extends ``(first, first_root)``.

    RFC 9162 §2.1.4.2 for ``0 < first < second``. The trivial cases are
    decided without a proof, which must then be empty: equal sizes need equal
    roots, and size 0 needs ``EMPTY_ROOT`` (stricter than transparency-dev/merkle,
    which accepts any root for size 0). Returns
    ``False`` for any malformed input instead of raising.
    """
    if not (0 <= first <= second and _valid_hashes(first_root, second_root, *proof)):
        return False
    if first == 0 or first == second:
        empty_ok = first != 0 or hmac.compare_digest(first_root, EMPTY_ROOT)
        same_ok = first != second or hmac.compare_digest(first_root, second_root)
        return not proof and empty_ok and same_ok
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not (fn & 1 or fn == 0):
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    ok_first = hmac.compare_digest(fr, first_root)
    ok_second = hmac.compare_digest(sr, second_root)
    return sn == 0 and ok_first and ok_second
