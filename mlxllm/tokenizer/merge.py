"""Applying learned merges to one chunk: the inner loop of BPE encoding (Chapter 1, Tokenization).

A chunk is a str with one character per token id (chr(id)); `ranks` maps a 2-character pair to its
merge rank and `merged[rank]` is the new token's character.
"""

import heapq
import sys
from itertools import repeat
from operator import add

NO_RANK = sys.maxsize
LONG_CHUNK = 256  # symbols; longer chunks are merged with a heap (near-linear time)


def apply_merges(symbols: str, ranks: dict[str, int], merged: list[str]) -> str:
    """Apply BPE merges to one chunk, lowest rank first (leftmost on a tie); returns the result.

    A chunk is a str with one character per token id (chr(id)), so a pair is a 2-character
    string: `ranks` maps pair -> rank and `merged[rank]` is the new token's character.
    Each merge scans all pairs (fast in C for short chunks); long chunks go to `apply_merges_heap`.
    """
    if len(symbols) > LONG_CHUNK:
        return apply_merges_heap(symbols, ranks, merged)
    get = ranks.get
    parts = list(symbols)
    # rank of every adjacent pair; map(add, s, s[1:]) yields s[0:2], s[1:3], ... in C
    pair_ranks = list(map(get, map(add, symbols, symbols[1:]), repeat(NO_RANK)))
    while pair_ranks:
        rank = min(pair_ranks)
        if rank == NO_RANK:
            break  # no adjacent pair is a merge: done
        i = pair_ranks.index(rank)
        parts[i] = merged[rank]  # parts[i], parts[i + 1] -> one token
        del parts[i + 1]
        del pair_ranks[i]
        # only the pairs next to the new token change
        if i > 0:
            pair_ranks[i - 1] = get(parts[i - 1] + parts[i], NO_RANK)
        if i < len(pair_ranks):
            pair_ranks[i] = get(parts[i] + parts[i + 1], NO_RANK)
    return "".join(parts)


def apply_merges_heap(symbols: str, ranks: dict[str, int], merged: list[str]) -> str:
    """The same result as `apply_merges`, in near-linear time for long chunks (tiktoken's
    large-piece idea).

    The lowest-ranked pair is always merged everywhere it occurs before any other (a pair that
    contains the new token was learned later, so it ranks higher). So a min-heap of ranks picks
    the next merge, and `buckets[rank]` lists the positions where that pair was seen; they are
    merged left to right. The symbols form a linked list; a position whose pair changed since it
    was listed is stale and skipped.
    """
    n = len(symbols)
    parts = list(symbols)  # parts[i]: the token starting at symbol i ("" once merged into its left)
    next_ = list(range(1, n + 1))  # next_[i] == n: no right neighbour
    previous = list(range(-1, n - 1))
    get = ranks.get
    buckets: dict[int, list[int]] = {}
    for i, rank in enumerate(map(get, map(add, symbols, symbols[1:]))):
        if rank is not None:
            buckets.setdefault(rank, []).append(i)
    heap = list(buckets)
    heapq.heapify(heap)
    while heap:
        rank = heapq.heappop(heap)
        new = merged[rank]
        for i in sorted(buckets.pop(rank)):  # leftmost first, as BPE breaks ties
            left_part = parts[i]
            if not left_part:
                continue  # stale: merged into its left neighbour
            j = next_[i]
            if j == n or get(left_part + parts[j]) != rank:
                continue  # stale: a neighbour changed
            parts[i], parts[j] = new, ""  # parts[i], parts[j] -> one token at i
            k = next_[i] = next_[j]
            if k < n:
                previous[k] = i
                if (right := get(new + parts[k])) is not None:  # new pairs rank higher than `rank`
                    if (bucket := buckets.get(right)) is None:
                        buckets[right] = bucket = []
                        heapq.heappush(heap, right)
                    bucket.append(i)
            if (h := previous[i]) >= 0 and (left := get(parts[h] + new)) is not None:
                if (bucket := buckets.get(left)) is None:
                    buckets[left] = bucket = []
                    heapq.heappush(heap, left)
                bucket.append(h)
    return "".join(parts)
