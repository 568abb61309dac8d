"""Byte-level BPE training with incremental pair counts.

Built in Chapter 1, Tokenization. The chapter writes the plain algorithm first (count every
pair, merge the most frequent, count again); this module gives the same merges, fast:

1. Count each distinct chunk once (a corpus has far fewer distinct chunks than chunks).
2. Count pairs over the distinct chunks, weighted by how often each chunk occurs, and index
   every pair to the chunks that contain it.
3. After a merge only the chunks in that pair's index change, so only their neighbouring
   pairs get updated; a lazy max-heap finds the next best pair without a full scan.
"""

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable

# not tqdm.auto: in Jupyter without ipywidgets it warns on import (every chapter imports mlxllm)
from tqdm import tqdm

from .patterns import Splitter

_LIST_LIMIT = 1 << 22  # characters; longer texts are split lazily to bound memory

# Heap keys sort ascending, but ties must go to the *greatest* pair of byte strings.
# Mapping each byte b to chr(255 - b) and ending every token with chr(256) turns
# "greater bytes" into "smaller string", prefixes included
# ("ab" > "a" becomes key("ab") < key("a")).
_DESCENDING = bytes(range(255, -1, -1))


def _descending_key(token: bytes) -> str:
    return token.translate(_DESCENDING).decode("latin-1") + "\u0100"


def train_merges(
    chunk_counts: dict[bytes, int],
    n_merges: int,
    vocab: dict[int, bytes],
    *,
    verbose: bool = False,
) -> list[tuple[int, int, int]]:
    """Learn up to `n_merges` merges from distinct chunks and their counts.

    `vocab` (id -> bytes) starts with the 256 single bytes at ids 0..255 and is extended in place
    with each new token. Returns (left id, right id, new id) in the order learned. Ties between
    equally frequent pairs go to the lexicographically greatest (left bytes, right bytes), the
    rule Stanford CS336 uses, so training is deterministic. Stops early if no pair is left.
    """
    # Each distinct chunk becomes a str with one character per token: chr(id). Then str.find
    # and str.replace look for and merge a pair in C, and a pair is a 2-character string.
    words = [chunk.decode("latin-1") for chunk in chunk_counts]  # bytes 0..255 -> chr(0..255)
    counts = list(chunk_counts.values())

    # pair -> total count, and pair -> indices of the words that contain it (it may go stale:
    # a word that no longer holds the pair is skipped when the pair is merged)
    pair_counts: dict[str, int] = defaultdict(int)
    where: dict[str, set[int]] = defaultdict(set)
    for index, (word, count) in enumerate(zip(words, counts)):
        for i in range(len(word) - 1):
            pair = word[i : i + 2]
            pair_counts[pair] += count
            where[pair].add(index)

    keys = {chr(token_id): _descending_key(token) for token_id, token in vocab.items()}
    heap = [(-count, keys[pair[0]] + keys[pair[1]], pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int, int]] = []
    next_id = max(vocab) + 1
    for _ in tqdm(range(n_merges), desc="BPE merges", disable=not verbose):
        # Pop until an entry is up to date. Counts of old pairs only ever go down, so a stale
        # entry is pushed back with its current count; new pairs are pushed once, when created.
        while heap:
            negative_count, key, pair = heapq.heappop(heap)
            count = pair_counts.get(pair, 0)
            if count == -negative_count:
                break
            if count > 0:
                heapq.heappush(heap, (-count, key, pair))
        else:
            break  # every chunk is a single token: nothing left to merge

        a, b = pair
        new = chr(next_id)
        merges.append((ord(a), ord(b), next_id))
        vocab[next_id] = vocab[ord(a)] + vocab[ord(b)]
        keys[new] = _descending_key(vocab[next_id])
        next_id += 1

        new_pairs: dict[str, int] = defaultdict(int)  # count changes of pairs that contain `new`
        for index in where.pop(pair):
            word = words[index]
            i = word.find(pair)
            if i < 0:
                continue  # stale index entry
            count = counts[index]
            previous_end = -1
            while i >= 0:
                # ... left a b right ...  becomes  ... left new right ...
                if i > 0:
                    if i == previous_end:  # "a b a b": the left neighbour is the new token
                        pair_counts[b + a] -= count
                        new_pairs[new + new] += count
                    else:
                        left = word[i - 1]
                        pair_counts[left + a] -= count
                        new_pairs[left + new] += count
                        where[left + new].add(index)
                end = i + 2
                i = word.find(pair, end)
                if i == end:  # the next occurrence starts right here: it handles (b, a)
                    where[new + new].add(index)
                elif end < len(word):
                    right = word[end]
                    pair_counts[b + right] -= count
                    new_pairs[new + right] += count
                    where[new + right].add(index)
                previous_end = end
            words[index] = word.replace(pair, new)  # left to right, like the scan above

        del pair_counts[pair]  # every occurrence is merged now
        for new_pair, count in new_pairs.items():
            pair_counts[new_pair] = count
            heapq.heappush(heap, (-count, keys[new_pair[0]] + keys[new_pair[1]], new_pair))
    return merges


def count_chunks(documents: Iterable[str], splitter: Splitter, special_re=None) -> Counter[bytes]:
    """Distinct chunks (UTF-8 bytes) of all documents with their counts; specials are cut out.

    Memory grows with the distinct chunks: a long document is split lazily (no list of all chunks).
    """
    text_counts: Counter[str] = Counter()
    for document in documents:
        if not isinstance(document, str):
            raise TypeError(f"training documents must be str, got {type(document).__name__}")
        pieces = special_re.split(document) if special_re is not None else (document,)
        for piece in pieces:
            if len(piece) <= _LIST_LIMIT:
                text_counts.update(splitter.findall(piece))  # a list: fastest
            else:
                text_counts.update(splitter.iter_chunks(piece))
    return Counter({chunk.encode("utf-8"): count for chunk, count in text_counts.items()})
