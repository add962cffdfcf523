"""RFC 6962 / RFC 9162 Merkle tree: published vectors, reference cross-checks, tampering."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.crypto.merkle import (
    EMPTY_ROOT,
    MissingNodeError,
    RootBuilder,
    append_leaves,
    consistency_proof,
    consistency_proof_coords,
    frontier_coords,
    inclusion_proof,
    inclusion_proof_coords,
    leaf_hash,
    node_hash,
    root_from_frontier,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

Nodes = dict[tuple[int, int], bytes]

# ---------------------------------------------------------------------------
# Published vectors. Leaf inputs, node hashes and roots: transparency-dev/merkle
# testonly/constants.go (LeafInputs, NodeHashes, RootHashes, CompactTrees), the
# same values as google/certificate-transparency cpp/merkletree/merkle_tree_test.cc
# (kInputs, kSHA256Roots). Proofs: transparency-dev/merkle proof/verify_test.go
# (inclusionProofs, consistencyProofs) = merkle_tree_test.cc kSHA256Paths /
# kSHA256Proofs. Leaf numbers there are 1-based; converted to 0-based below.
# ---------------------------------------------------------------------------

LEAF_INPUTS = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]

NODE_HASHES = [
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]

ROOTS = [  # index = tree size
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

# (0-based leaf index, tree size, proof)
INCLUSION_VECTORS = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]

# (first size, second size, proof)
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]

# Node IDs (level, index) that make up each proof: transparency-dev/merkle
# proof/proof_test.go (TestInclusion, TestConsistency). Compared as sets: that
# file lists a rehashed range right to left, we list it left to right.
INCLUSION_COORD_VECTORS = [
    (0, 1, []),
    (0, 2, [(0, 1)]),
    (1, 2, [(0, 0)]),
    (1, 3, [(0, 0), (0, 2)]),
    (0, 7, [(0, 1), (1, 1), (0, 6), (1, 2)]),
    (1, 7, [(0, 0), (1, 1), (0, 6), (1, 2)]),
    (2, 7, [(0, 3), (1, 0), (0, 6), (1, 2)]),
    (3, 7, [(0, 2), (1, 0), (0, 6), (1, 2)]),
    (4, 7, [(0, 5), (0, 6), (2, 0)]),
    (5, 7, [(0, 4), (0, 6), (2, 0)]),
    (6, 7, [(1, 2), (2, 0)]),
    (2, 4, [(0, 3), (1, 0)]),
    (3, 5, [(0, 2), (1, 0), (0, 4)]),
    (3, 6, [(0, 2), (1, 0), (1, 2)]),
    (4, 6, [(0, 5), (2, 0)]),
    (10, 15, [(0, 11), (1, 4), (0, 14), (1, 6), (3, 0)]),
    (24, 31, [(0, 25), (1, 13), (0, 30), (1, 14), (3, 2), (4, 0)]),
    (81, 95, [(0, 80), (1, 41), (2, 21), (0, 94), (1, 46), (2, 22), (4, 4), (6, 0)]),
]
CONSISTENCY_COORD_VECTORS = [
    (1, 2, [(0, 1)]),
    (1, 4, [(0, 1), (1, 1)]),
    (1, 6, [(0, 1), (1, 1), (1, 2)]),
    (2, 3, [(0, 2)]),
    (2, 8, [(1, 1), (2, 1)]),
    (3, 7, [(0, 2), (0, 3), (1, 0), (0, 6), (1, 2)]),
    (4, 7, [(0, 6), (1, 2)]),
    (5, 7, [(0, 4), (0, 5), (0, 6), (2, 0)]),
    (6, 7, [(1, 2), (0, 6), (2, 0)]),
    (7, 8, [(0, 6), (0, 7), (1, 2), (2, 0)]),
    (1, 1, []),
    (2, 2, []),
    (3, 3, []),
    (4, 4, []),
    (5, 5, []),
    (7, 7, []),
    (8, 8, []),
    (2, 4, [(1, 1)]),
    (3, 5, [(0, 2), (0, 3), (1, 0), (0, 4)]),
    (3, 6, [(0, 2), (0, 3), (1, 0), (1, 2)]),
    (4, 6, [(1, 2)]),
    (1, 7, [(0, 1), (1, 1), (0, 6), (1, 2)]),
    (10, 15, [(1, 4), (1, 5), (0, 14), (1, 6), (3, 0)]),
    (24, 31, [(3, 2), (0, 30), (1, 14), (2, 6), (4, 0)]),
    (81, 95, [(0, 80), (0, 81), (1, 41), (2, 21), (0, 94), (1, 46), (2, 22), (4, 4), (6, 0)]),
]

# transparency-dev/merkle proof/verify_test.go sha256SomeHash.
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def hexes(values: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


VECTOR_LEAVES = [leaf_hash(d) for d in LEAF_INPUTS]


def nodes_of(leaves: Sequence[bytes], cuts: Sequence[int] = ()) -> Nodes:
    """Store a tree the way the sequencer does: append_leaves in batches split at ``cuts``."""
    nodes: Nodes = {}
    frontier: list[bytes] = []
    size = 0
    bounds = [0, *sorted(set(cuts)), len(leaves)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        new, frontier = append_leaves(size, frontier, leaves[lo:hi])
        for level, index, h in new:
            assert (level, index) not in nodes, "node emitted twice"
            nodes[(level, index)] = h
        size = hi
    return nodes


# ---------------------------------------------------------------------------
# Naive reference implementation, transcribed from RFC 9162 §2.1.1, §2.1.3.1
# and §2.1.4.1 (recursive, slicing, quadratic): the oracle for the fast code.
# ---------------------------------------------------------------------------


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def reference_root(d: Sequence[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = _split(len(d))
    return node_hash(reference_root(d[:k]), reference_root(d[k:]))


def unsafe_reference_inclusion_proof(d: Sequence[bytes], m: int) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _split(len(d))
    if m < k:
        return [*unsafe_reference_inclusion_proof(d[:k], m), reference_root(d[k:])]
    return [*unsafe_reference_inclusion_proof(d[k:], m - k), reference_root(d[:k])]


def _subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [reference_root(d)]
    k = _split(len(d))
    if m <= k:
        return [*_subproof(m, d[:k], b), reference_root(d[k:])]
    return [*_subproof(m - k, d[k:], False), reference_root(d[:k])]


def unsafe_reference_consistency_proof(d: Sequence[bytes], m: int) -> list[bytes]:
    return _subproof(m, d, True)


MAX_SIZE = 300
LEAVES = [leaf_hash(i.to_bytes(4, "big")) for i in range(2 * MAX_SIZE + 2)]
REFERENCE_ROOTS = [reference_root(LEAVES[:n]) for n in range(2 * MAX_SIZE + 2)]


def log2_ceil(n: int) -> int:
    return (n - 1).bit_length()


# ---------------------------------------------------------------------------
# Tampering probes, after transparency-dev/merkle proof/verify_test.go
# (corruptInclusionProof / corruptConsistencyProof) and merkle_tree_test.cc.
# ---------------------------------------------------------------------------


def flipped(proof: Sequence[bytes], i: int, bit: int) -> list[bytes]:
    out = list(proof)
    h = bytearray(out[i])
    h[bit // 8] ^= 1 << (bit % 8)
    out[i] = bytes(h)
    return out


def corrupt_inclusion(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> Iterator[tuple[str, tuple[bytes, int, int, list[bytes], bytes]]]:
    yield "index - 1", (leaf, index - 1, size, proof, root)
    yield "index + 1", (leaf, index + 1, size, proof, root)
    yield "index ^ 2", (leaf, index ^ 2, size, proof, root)
    yield "size * 2", (leaf, index, size * 2, proof, root)
    yield "size // 2", (leaf, index, size // 2, proof, root)
    yield "wrong leaf", (leaf_hash(b"WrongLeaf"), index, size, proof, root)
    yield "short leaf", (b"WrongLeaf", index, size, proof, root)
    yield "empty root", (leaf, index, size, proof, EMPTY_ROOT)
    yield "random root", (leaf, index, size, proof, SOME_HASH)
    yield "trailing garbage", (leaf, index, size, [*proof, b""], root)
    yield "trailing root", (leaf, index, size, [*proof, root], root)
    yield "preceding garbage", (leaf, index, size, [b"", *proof], root)
    yield "preceding root", (leaf, index, size, [root, *proof], root)
    for i in range(len(proof)):
        yield f"proof[{i}] bit flipped", (leaf, index, size, flipped(proof, i, 3), root)
        yield f"proof[{i}] removed", (leaf, index, size, proof[:i] + proof[i + 1 :], root)
        yield f"proof[{i}] duplicated", (leaf, index, size, proof[: i + 1] + proof[i:], root)
    if len(proof) > 1:
        yield "inserted component", (leaf, index, size, [proof[0], SOME_HASH, *proof[1:]], root)


def corrupt_consistency(
    first: int, second: int, proof: list[bytes], root1: bytes, root2: bytes
) -> Iterator[tuple[str, tuple[int, int, list[bytes], bytes, bytes]]]:
    yield "first - 1", (first - 1, second, proof, root1, root2)
    yield "first + 1", (first + 1, second, proof, root1, root2)
    yield "first ^ 2", (first ^ 2, second, proof, root1, root2)
    yield "second * 2", (first, second * 2, proof, root1, root2)
    yield "second // 2", (first, second // 2, proof, root1, root2)
    yield "wrong root1", (first, second, proof, SOME_HASH, root2)
    yield "wrong root2", (first, second, proof, root1, SOME_HASH)
    yield "short root1", (first, second, proof, b"WrongRoot", root2)
    yield "swapped roots", (first, second, proof, root2, root1)
    yield "empty proof", (first, second, [], root1, root2)
    yield "trailing garbage", (first, second, [*proof, b""], root1, root2)
    yield "trailing root1", (first, second, [*proof, root1], root1, root2)
    yield "trailing root2", (first, second, [*proof, root2], root1, root2)
    yield "preceding garbage", (first, second, [b"", *proof], root1, root2)
    yield "preceding root1", (first, second, [root1, *proof], root1, root2)
    yield "preceding root2", (first, second, [root2, *proof], root1, root2)
    yield "preceding proof[0]", (first, second, [proof[0], *proof], root1, root2)
    for i in range(len(proof)):
        yield f"proof[{i}] bit flipped", (first, second, flipped(proof, i, 4), root1, root2)
        yield f"proof[{i}] removed", (first, second, proof[:i] + proof[i + 1 :], root1, root2)


def assert_inclusion_tamper_evident(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> None:
    accepted = [
        d
        for d, args in corrupt_inclusion(leaf, index, size, proof, root)
        if verify_inclusion(*args)
    ]
    assert accepted == []


def assert_consistency_tamper_evident(
    first: int, second: int, proof: list[bytes], root1: bytes, root2: bytes
) -> None:
    probes = corrupt_consistency(first, second, proof, root1, root2)
    accepted = [d for d, args in probes if verify_consistency(*args)]
    assert accepted == []


# ---------------------------------------------------------------------------
# Published vectors
# ---------------------------------------------------------------------------


def test_hashing_matches_published_leaf_node_and_empty_hashes() -> None:
    assert EMPTY_ROOT.hex() == ROOTS[0]
    assert [h.hex() for h in VECTOR_LEAVES] == NODE_HASHES[0]
    assert node_hash(VECTOR_LEAVES[0], VECTOR_LEAVES[1]).hex() == NODE_HASHES[1][0]


@pytest.mark.parametrize("size", range(9))
def test_roots_match_published_vectors(size: int) -> None:
    assert root_from_leaf_hashes(VECTOR_LEAVES[:size]).hex() == ROOTS[size]
    assert reference_root(VECTOR_LEAVES[:size]).hex() == ROOTS[size]


def test_append_leaves_stores_exactly_the_published_perfect_subtrees() -> None:
    nodes = nodes_of(VECTOR_LEAVES, cuts=[3, 5])
    expected = {
        (level, index): h for level, row in enumerate(NODE_HASHES) for index, h in enumerate(row)
    }
    assert {c: h.hex() for c, h in nodes.items()} == expected


def test_root_builder_frontier_matches_published_compact_trees() -> None:
    nh = NODE_HASHES
    compact = [
        [],
        [nh[0][0]],
        [nh[1][0]],
        [nh[1][0], nh[0][2]],
        [nh[2][0]],
        [nh[2][0], nh[0][4]],
        [nh[2][0], nh[1][2]],
        [nh[2][0], nh[1][2], nh[0][6]],
        [nh[3][0]],
    ]
    builder = RootBuilder()
    for size in range(9):
        assert builder.size == size
        assert [h.hex() for h in builder.frontier] == compact[size]
        assert builder.root().hex() == ROOTS[size]
        assert root_from_frontier(builder.frontier).hex() == ROOTS[size]
        if size < 8:
            builder.append(VECTOR_LEAVES[size])


@pytest.mark.parametrize(("index", "size", "expected"), INCLUSION_VECTORS)
def test_inclusion_proofs_match_published_vectors(
    index: int, size: int, expected: list[str]
) -> None:
    nodes = nodes_of(VECTOR_LEAVES)
    proof = inclusion_proof(index, size, nodes)
    assert [h.hex() for h in proof] == expected
    root = bytes.fromhex(ROOTS[size])
    assert verify_inclusion(VECTOR_LEAVES[index], index, size, hexes(expected), root)
    assert_inclusion_tamper_evident(VECTOR_LEAVES[index], index, size, hexes(expected), root)


@pytest.mark.parametrize(("first", "second", "expected"), CONSISTENCY_VECTORS)
def test_consistency_proofs_match_published_vectors(
    first: int, second: int, expected: list[str]
) -> None:
    nodes = nodes_of(VECTOR_LEAVES)
    proof = consistency_proof(first, second, nodes)
    assert [h.hex() for h in proof] == expected
    root1, root2 = bytes.fromhex(ROOTS[first]), bytes.fromhex(ROOTS[second])
    assert verify_consistency(first, second, hexes(expected), root1, root2)
    if expected:
        assert_consistency_tamper_evident(first, second, hexes(expected), root1, root2)


@pytest.mark.parametrize(("index", "size", "expected"), INCLUSION_COORD_VECTORS)
def test_inclusion_coords_match_published_node_ids(
    index: int, size: int, expected: list[tuple[int, int]]
) -> None:
    coords = inclusion_proof_coords(index, size)
    assert len(coords) == len(expected)
    assert set(coords) == set(expected)


@pytest.mark.parametrize(("first", "second", "expected"), CONSISTENCY_COORD_VECTORS)
def test_consistency_coords_match_published_node_ids(
    first: int, second: int, expected: list[tuple[int, int]]
) -> None:
    coords = consistency_proof_coords(first, second)
    assert len(coords) == len(expected)
    assert set(coords) == set(expected)


def test_trivial_consistency_cases() -> None:
    # After merkle_tree_test.cc VerifyConsistencyProof / verify_test.go TestVerifyConsistency,
    # except that refgate also requires the size-0 root to be the empty root.
    r1, r2 = SOME_HASH, leaf_hash(b"other")
    assert verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    assert verify_consistency(0, 1, [], EMPTY_ROOT, r2)
    assert verify_consistency(1, 1, [], r2, r2)
    assert not verify_consistency(0, 1, [], r1, r2)  # size 0 must have the empty root
    assert not verify_consistency(1, 0, [], r1, r2)  # time travel
    assert not verify_consistency(2, 1, [], r1, r2)
    assert not verify_consistency(1, 2, [], r1, r2)  # empty proof
    assert not verify_consistency(0, 0, [], EMPTY_ROOT, r2)  # roots differ
    assert not verify_consistency(1, 1, [], EMPTY_ROOT, r2)
    for first, second in [(0, 0), (0, 1), (1, 1)]:  # roots match, proof not empty
        assert not verify_consistency(first, second, [EMPTY_ROOT], EMPTY_ROOT, EMPTY_ROOT)


def test_invalid_inclusion_requests_never_verify() -> None:
    # merkle_tree_test.cc VerifyPath / verify_test.go TestVerifyInclusion "probes"
    for index, size in [(0, 0), (1, 0), (2, 1), (-1, 1)]:
        assert not verify_inclusion(SOME_HASH, index, size, [], b"")
        assert not verify_inclusion(b"", index, size, [], EMPTY_ROOT)
        assert not verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)
    single = leaf_hash(b"data")
    assert verify_inclusion(single, 0, 1, [], single)
    assert not verify_inclusion(single, 0, 1, [], b"")
    assert not verify_inclusion(b"", 0, 1, [], single)


# ---------------------------------------------------------------------------
# Against the reference, exhaustively for small trees and by hypothesis up to 300
# ---------------------------------------------------------------------------

SMALL = 33


def test_small_trees_exhaustively_match_reference() -> None:
    nodes = nodes_of(LEAVES[:SMALL])
    for size in range(1, SMALL + 1):
        d = LEAVES[:size]
        root = REFERENCE_ROOTS[size]
        assert root_from_frontier([nodes[c] for c in frontier_coords(size)]) == root
        for index in range(size):
            proof = inclusion_proof(index, size, nodes)
            assert proof == unsafe_reference_inclusion_proof(d, index)
            assert verify_inclusion(d[index], index, size, proof, root)
        for first in range(size + 1):
            proof = consistency_proof(first, size, nodes)
            assert proof == (unsafe_reference_consistency_proof(d, first) if first else [])
            assert verify_consistency(first, size, proof, REFERENCE_ROOTS[first], root)


@st.composite
def stored_tree(draw: st.DrawFn, min_size: int = 1) -> tuple[int, Nodes]:
    size = draw(st.integers(min_size, MAX_SIZE))
    cuts = draw(st.lists(st.integers(0, size), max_size=6))
    return size, nodes_of(LEAVES[:size], cuts)


@settings(max_examples=100, deadline=None)
@given(size=st.integers(0, MAX_SIZE), cuts=st.lists(st.integers(0, MAX_SIZE), max_size=8))
def test_batched_appends_equal_one_batch_and_the_reference(size: int, cuts: list[int]) -> None:
    cuts = [c for c in cuts if c <= size]
    nodes = nodes_of(LEAVES[:size], cuts)
    assert nodes == nodes_of(LEAVES[:size])
    # Exactly the perfect subtrees inside [0, size), each with its reference hash.
    expected = {
        (level, index) for level in range(size.bit_length()) for index in range(size >> level)
    }
    assert set(nodes) == expected
    for (level, index), h in nodes.items():
        assert h == reference_root(LEAVES[index << level : (index + 1) << level])
    frontier = [nodes[c] for c in frontier_coords(size)]
    assert root_from_frontier(frontier) == REFERENCE_ROOTS[size]
    assert root_from_leaf_hashes(iter(LEAVES[:size])) == REFERENCE_ROOTS[size]


@settings(max_examples=150, deadline=None)
@given(tree=stored_tree(), data=st.data())
def test_inclusion_proofs_equal_reference_verify_and_resist_tampering(
    tree: tuple[int, Nodes], data: st.DataObject
) -> None:
    size, nodes = tree
    index = data.draw(st.integers(0, size - 1))
    coords = inclusion_proof_coords(index, size)
    assert len(coords) <= 2 * log2_ceil(size)
    proof = inclusion_proof(index, size, {c: nodes[c] for c in coords})
    assert proof == unsafe_reference_inclusion_proof(LEAVES[:size], index)
    root = REFERENCE_ROOTS[size]
    assert verify_inclusion(LEAVES[index], index, size, proof, root)
    assert_inclusion_tamper_evident(LEAVES[index], index, size, proof, root)
    if size > 1:
        other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index))
        assert not verify_inclusion(LEAVES[index], other, size, proof, root)
        assert not verify_inclusion(LEAVES[other], index, size, proof, root)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        assert not verify_inclusion(LEAVES[index], index, size, flipped(proof, i, bit), root)


@settings(max_examples=150, deadline=None)
@given(tree=stored_tree(min_size=2), data=st.data())
def test_consistency_proofs_equal_reference_verify_and_resist_tampering(
    tree: tuple[int, Nodes], data: st.DataObject
) -> None:
    second, nodes = tree
    first = data.draw(st.integers(1, second - 1))
    coords = consistency_proof_coords(first, second)
    assert len(coords) <= 2 * log2_ceil(second)
    proof = consistency_proof(first, second, {c: nodes[c] for c in coords})
    assert proof == unsafe_reference_consistency_proof(LEAVES[:second], first)
    root1, root2 = REFERENCE_ROOTS[first], REFERENCE_ROOTS[second]
    assert verify_consistency(first, second, proof, root1, root2)
    assert_consistency_tamper_evident(first, second, proof, root1, root2)
    i = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, 255))
    assert not verify_consistency(first, second, flipped(proof, i, bit), root1, root2)
    # A different history of the same sizes is not consistent.
    assert not verify_consistency(first, second, proof, root1, SOME_HASH)
    assert not verify_consistency(first, second, proof, SOME_HASH, root2)


@settings(max_examples=200, deadline=None)
@given(
    index=st.integers(-(2**70), 2**70),
    size=st.integers(-(2**70), 2**70),
    proof=st.lists(st.binary(max_size=40), max_size=70),
    leaf=st.binary(max_size=40),
    root=st.binary(max_size=40),
)
def test_verifiers_return_false_on_garbage_instead_of_raising(
    index: int, size: int, proof: list[bytes], leaf: bytes, root: bytes
) -> None:
    assert isinstance(verify_inclusion(leaf, index, size, proof, root), bool)
    assert isinstance(verify_consistency(index, size, proof, leaf, root), bool)


def test_inclusion_proof_does_not_bind_tree_size_by_itself() -> None:
    # RFC 9162 property the auditor must know: a proof checks (index, root), and a
    # tree size only through the path's shape. Leaf 0's path has the same shape in
    # trees of 3 and 4 leaves, so only the signed checkpoint ties a root to a size.
    nodes = nodes_of(LEAVES[:4])
    proof = inclusion_proof(0, 3, nodes)
    assert verify_inclusion(LEAVES[0], 0, 3, proof, REFERENCE_ROOTS[3])
    assert verify_inclusion(LEAVES[0], 0, 4, proof, REFERENCE_ROOTS[3])


# ---------------------------------------------------------------------------
# Storage contract and input validation
# ---------------------------------------------------------------------------


def test_proof_assembly_reports_the_missing_node() -> None:
    nodes = nodes_of(LEAVES[:95])
    coords = inclusion_proof_coords(81, 95)
    partial = {c: nodes[c] for c in coords[1:]}
    with pytest.raises(MissingNodeError) as info:
        inclusion_proof(81, 95, partial)
    assert isinstance(info.value, KeyError)
    assert info.value.coord == coords[0]
    assert str(info.value) == f"missing Merkle node (level={coords[0][0]}, index={coords[0][1]})"
    with pytest.raises(MissingNodeError):
        consistency_proof(81, 95, {})


def test_malformed_stored_node_is_refused() -> None:
    nodes = nodes_of(LEAVES[:8])
    nodes[(0, 1)] = b"short"
    with pytest.raises(ValueError, match="32 bytes"):
        inclusion_proof(0, 8, nodes)


@pytest.mark.parametrize(("index", "size"), [(0, 0), (5, 5), (-1, 3), (6, 5)])
def test_inclusion_of_a_leaf_outside_the_tree_is_refused(index: int, size: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        inclusion_proof_coords(index, size)
    with pytest.raises(ValueError, match="out of range"):
        inclusion_proof(index, size, {})


@pytest.mark.parametrize(("first", "second"), [(5, 4), (1, 0), (-1, 3)])
def test_consistency_backwards_or_negative_is_refused(first: int, second: int) -> None:
    with pytest.raises(ValueError, match="first"):
        consistency_proof_coords(first, second)


def test_append_validates_frontier_and_hash_sizes() -> None:
    _, frontier = append_leaves(0, [], LEAVES[:3])
    with pytest.raises(ValueError, match="frontier for size 3 must have 2 hashes"):
        append_leaves(3, frontier[:1], LEAVES[3:4])
    with pytest.raises(ValueError, match="leaf hash must be 32 bytes"):
        append_leaves(3, frontier, [b"x"])
    with pytest.raises(ValueError, match="size must be >= 0"):
        append_leaves(-1, [], [])
    with pytest.raises(ValueError, match="32 bytes"):
        RootBuilder().append(b"")
    with pytest.raises(ValueError, match="32 bytes"):
        node_hash(b"", LEAVES[0])
    with pytest.raises(ValueError, match="32 bytes"):
        root_from_frontier([b"abc"])


def test_append_returns_new_nodes_and_frontier_for_the_next_batch() -> None:
    new, frontier = append_leaves(0, [], LEAVES[:5])
    assert [(level, index) for level, index, _ in new] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (0, 2),
        (0, 3),
        (1, 1),
        (2, 0),
        (0, 4),
    ]
    assert frontier_coords(5) == [(2, 0), (0, 4)]
    more, frontier = append_leaves(5, frontier, LEAVES[5:8])
    assert [(level, index) for level, index, _ in more] == [
        (0, 5),
        (1, 2),
        (0, 6),
        (0, 7),
        (1, 3),
        (2, 1),
        (3, 0),
    ]
    assert frontier == [reference_root(LEAVES[:8])]
    nothing, same = append_leaves(8, frontier, [])
    assert nothing == []
    assert same == frontier
