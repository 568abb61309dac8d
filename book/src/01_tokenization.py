# %% [markdown]
# # 1. Tokenization: from text to ids
#
# ```
# text ─tokenization─▶ ids ─embedding─▶ T×C ─N × block─▶ T×C ─prediction─▶ T×V
#       ^^^^^^^^^^^^
# ```
#
# A language model reads and writes integers, not text. The **tokenizer** turns a string
# into a list of ids from a fixed vocabulary and back again, without losing a single
# character. This chapter builds the one that GPT-2, GPT-4 and LLaMA 3 use, **byte-level
# byte pair encoding (BPE)**:
#
# 1. write text as UTF-8 bytes, so 256 base tokens cover every string in every language;
# 2. learn **merges**: repeatedly glue the most frequent adjacent pair of tokens into a
#    new token;
# 3. cut text into chunks with a regex first, so merges never cross a word boundary;
# 4. reserve **special tokens** such as `<|endoftext|>`, and refuse them in ordinary
#    text.
#
# We write each step by hand on a tiny text, then use the package `mlxllm.tokenizer`,
# check that both agree, load GPT-2's real tokenizer and check it against OpenAI's
# `tiktoken`, and measure the speed.

# %%
import html
import os
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import regex
from IPython.display import HTML, display

from mlxllm import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, Tokenizer
from mlxllm.data import get_path
from mlxllm.tokenizer.train import train_merges

shakespeare = Path(get_path("tinyshakespeare")).read_text(encoding="utf-8")
n_bytes = len(shakespeare.encode("utf-8"))
print(f"tinyshakespeare: {len(shakespeare):,} characters, {n_bytes:,} bytes")

# %% [markdown]
# ## 1.1 Characters or bytes?
#
# A Python `str` is a sequence of Unicode **code points**: almost 150,000 are assigned,
# and new ones arrive every year. A vocabulary with one token per code point would be
# huge and would still meet characters it has never seen. **UTF-8** writes every code
# point as 1 to 4 bytes (ASCII stays one byte), so a tokenizer that starts from bytes
# needs only **256 base tokens** and can encode *any* string: there is no "unknown"
# token. The price is longer sequences for non-English text, which the merges then
# shorten.

# %%
for text in ["hello", "héllo", "中文", "👋", "👨‍👩‍👧"]:
    data = text.encode("utf-8")
    print(f"{text!r:14} {len(text)} code points -> {len(data):2} bytes: {list(data)}")

# %% [markdown]
# The family emoji is five code points (three people joined by two invisible "zero-width
# joiners") and 18 bytes. As bytes, every text is a list of integers in `[0, 256)`:
# already a valid, if long, tokenization.

# %% [markdown]
# ## 1.2 Byte pair encoding, by hand
#
# BPE starts from those bytes and repeats one step: **count every adjacent pair of
# tokens, and replace the most frequent pair everywhere by a new token** (ids 256, 257,
# ...). The list of merges, in the order they were learned, *is* the tokenizer. Two
# plain functions do all the work:

# %%
def pair_counts(ids: list[int]) -> dict[tuple[int, int], int]:
    """How often each adjacent pair occurs.

    [1, 2, 3, 1, 2] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    """
    counts = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids`, left to right, by `new_id`."""
    merged, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


assert pair_counts([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
assert merge([1, 2, 3, 1, 2], (1, 2), 256) == [256, 3, 256]

# %% [markdown]
# When two pairs are equally frequent we need a rule, or two runs could learn different
# tokenizers. We take the pair whose byte strings are **lexicographically greatest**
# (the rule of Stanford's CS336), so the result never depends on dictionary order. Now
# ten merges on a tiny text:

# %%
tiny = "the cat sat on the mat; the hat sat on the cat"
vocab = {i: bytes([i]) for i in range(256)}  # token id -> the bytes it stands for
ids = list(tiny.encode("utf-8"))
hand_merges = []  # (left id, right id, new id), in the order learned
print(f"{'step':>4}  {'pair':14} {'count':>5}  {'new token':12} length")
print(f"{0:4}  {'':14} {'':5}  {'':12} {len(ids):3}")
for step in range(1, 11):
    counts = pair_counts(ids)
    # the most frequent pair; among equals, the greatest bytes
    pair = max(counts, key=lambda p: (counts[p], vocab[p[0]], vocab[p[1]]))
    new_id = 256 + len(hand_merges)
    ids = merge(ids, pair, new_id)
    vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
    hand_merges.append((pair[0], pair[1], new_id))
    shown = f"{vocab[pair[0]].decode()!r}+{vocab[pair[1]].decode()!r}"
    token = vocab[new_id].decode()
    print(f"{step:4}  {shown:14} {counts[pair]:5}  {new_id} {token!r:8} {len(ids):3}")

# %% [markdown]
# Every merge shortens the sequence by the count of its pair: 46 bytes became 13 tokens
# with ten new ones. Notice tokens such as `'the '` and even `'sat on the '`, which glue
# words and spaces together; §1.4 deals with those. The picture shows the text after
# every other merge, one coloured box per token:

# %%
def tokens_after(n_merges: int) -> list[bytes]:
    ids = list(tiny.encode("utf-8"))
    for a, b, new_id in hand_merges[:n_merges]:
        ids = merge(ids, (a, b), new_id)
    return [vocab[i] for i in ids]


fig, ax = plt.subplots(figsize=(9, 3.2))
for row, n in enumerate([0, 2, 4, 6, 8, 10]):
    x = 0
    for k, token in enumerate(tokens_after(n)):
        width = len(token)
        box = plt.Rectangle((x, -row), width - 0.1, 0.8, color=plt.cm.Pastel1(k % 9))
        ax.add_patch(box)
        ax.text(x + width / 2, -row + 0.4, token.decode().replace(" ", "␣"),
                ha="center", va="center", fontsize=7)
        x += width
    ax.text(-0.5, -row + 0.4, f"{n:2} merges: {len(tokens_after(n)):2} tokens",
            ha="right", va="center", fontsize=8)
ax.set_xlim(-12, len(tiny))
ax.set_ylim(-5.4, 1)
ax.axis("off")
ax.set_title("the tiny text after 0, 2, ..., 10 merges (one box per token)", fontsize=9)
plt.show()

# %% [markdown]
# ## 1.3 Encoding new text: apply the merges lowest rank first
#
# To encode a new string we replay training: start from bytes and, among the adjacent
# pairs that are merges, apply the one learned **first** (lowest rank), again and again.
# Why not any order? A later merge is defined on tokens made by earlier ones (`' t'` +
# `'he'` needs `'he'` to exist first), and the same bytes can be covered by overlapping
# pairs, so the order decides the result. Only "lowest rank first" reproduces the
# segmentation that training itself produced and counted. Here is the hand-written
# encoder, next to an encoder that applies merges in the wrong order (latest first):

# %%
def encode_by_hand(text: str, merges: list[tuple[int, int, int]]) -> list[int]:
    rank = {(a, b): r for r, (a, b, _) in enumerate(merges)}
    new = {(a, b): n for a, b, n in merges}
    ids = list(text.encode("utf-8"))
    while len(ids) > 1:
        # the adjacent pair learned earliest
        pair = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, float("inf")))
        if pair not in rank:
            break  # no adjacent pair is a merge
        ids = merge(ids, pair, new[pair])
    return ids


def encode_latest_first(text: str, merges) -> list[int]:
    ids = list(text.encode("utf-8"))
    for a, b, new_id in reversed(merges):
        ids = merge(ids, (a, b), new_id)
    return ids


for word in ["the cat", "that hat"]:
    right = encode_by_hand(word, hand_merges)
    wrong = encode_latest_first(word, hand_merges)
    print(f"{word!r:10} lowest rank first: {[vocab[i].decode() for i in right]}")
    print(f"{'':10} latest first:      {[vocab[i].decode() for i in wrong]}")
# replaying the merges gives training's own segmentation
assert encode_by_hand(tiny, hand_merges) == ids

# %% [markdown]
# Applied latest-first, the late merges find none of the tokens they need and the text
# stays long.
#
# ## 1.4 Regex pre-splitting: merges stay inside words
#
# Trained on raw bytes, BPE happily learns tokens such as `'e t'` or `'dog.'`: every
# word would then need a token for each punctuation mark and space that may follow it,
# wasting the vocabulary on accidents of context. GPT-2 therefore first **cuts the text
# into chunks** with a regular expression (letters, digits, punctuation, whitespace,
# each optionally with one leading space; contractions like `'ll` apart) and counts
# pairs only *inside* chunks. GPT-4's pattern also splits numbers into groups of at most
# three digits and keeps newlines apart. Both need the `regex` module for Unicode
# classes such as `\p{L}` (any letter).

# %%
sample = "I'll pay 1234567 dollars!!!   Hello\n\n  world, HOW'S it going?"
print(GPT2_SPLIT_PATTERN)
print("GPT-2:", regex.findall(GPT2_SPLIT_PATTERN, sample))
print("GPT-4:", regex.findall(GPT4_SPLIT_PATTERN, sample))

# %% [markdown]
# What the split prevents, measured: train 300 merges on the first 100,000 characters of
# Shakespeare once with GPT-4's pattern and once with a pattern that keeps each line
# whole (`.+\n?`), and count learned tokens with a space or punctuation *inside* (after
# the first character), i.e. tokens that span words:

# %%
text_100k = shakespeare[:100_000]
split = Tokenizer.train(text_100k, 256 + 300, pattern=GPT4_SPLIT_PATTERN)
unsplit = Tokenizer.train(text_100k, 256 + 300, pattern=r".+\n?")


def spans_words(token: bytes) -> bool:
    return regex.search(rb"[ ,.;:!?]", token[1:]) is not None


for name, tokenizer in [("GPT-4 split", split), ("whole lines", unsplit)]:
    made = [left + right for left, right in tokenizer.merges]
    crossing = [t.decode() for t in made if spans_words(t)]
    print(f"{name:12} {len(crossing):3} of 300 tokens span words, e.g. {crossing[:6]}")
assert not any(spans_words(left + right) for left, right in split.merges)

# %% [markdown]
# With pre-splitting, training works on chunks. Our hand trainer, extended to chunks
# (count pairs inside every chunk, merge inside every chunk), is the definition; we will
# check the package against it in §1.6.

# %%
def train_by_hand(text: str, n_merges: int, pattern: str) -> list[tuple[bytes, bytes]]:
    """The plain algorithm: full recount of every chunk after every merge."""
    vocab = {i: bytes([i]) for i in range(256)}
    chunks = [list(chunk.encode("utf-8")) for chunk in regex.findall(pattern, text)]
    merges = []
    for new_id in range(256, 256 + n_merges):
        counts = {}
        for chunk in chunks:
            for pair, count in pair_counts(chunk).items():
                counts[pair] = counts.get(pair, 0) + count
        if not counts:
            break
        pair = max(counts, key=lambda p: (counts[p], vocab[p[0]], vocab[p[1]]))
        chunks = [merge(chunk, pair, new_id) for chunk in chunks]
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
        merges.append((vocab[pair[0]], vocab[pair[1]]))
    return merges

# %% [markdown]
# ## 1.5 Special tokens, and why they are refused by default
#
# A model trained on many documents needs to know where one ends: GPT-2 puts
# `<|endoftext|>` (id 50256) between them. Such **special tokens** are not learned by
# merges; they get reserved ids, and the text is split at them before the regex, so that
# no merge crosses one. But a special token is a *control signal*: if a user's text
# contained the characters `<|endoftext|>` and we encoded them as id 50256, the user
# could end a document or impersonate the system. So, like `tiktoken`, `encode`
# **refuses** text that contains a special token unless you allow it; `encode_ordinary`
# encodes it as plain characters.

# %%
with_special = Tokenizer.train(text_100k, 256 + 300, special_tokens=["<|endoftext|>"])
print(with_special, with_special.special_tokens)
document = "First Citizen:\nSpeak.<|endoftext|>All:\nSpeak!"
try:
    with_special.encode(document)
except ValueError as error:
    print("ValueError:", error)
allowed = with_special.encode(document, allowed_special={"<|endoftext|>"})
plain = with_special.encode_ordinary(document)
print("allowed:", allowed)
print("plain:  ", plain)
end_id = with_special.special_tokens["<|endoftext|>"]  # last id: 256 bytes + 299 merges
assert allowed.count(end_id) == 1 and end_id not in plain
assert with_special.decode(allowed) == with_special.decode(plain) == document

# %% [markdown]
# ## 1.6 Training on Shakespeare with the package
#
# The hand trainer recounts every pair of every chunk after each merge: for a
# 4,096-token vocabulary on Shakespeare's 1.1 MB that is 3,840 passes over ~300,000
# chunks, about twenty minutes of Python. The package's trainer learns the same merges
# in well under a second by doing less work, not by being clever with hardware:
#
# 1. it counts each **distinct** chunk once, with its frequency (see the next cell: a
#    few thousand occurrences of `" the"` become one chunk with that weight);
# 2. it keeps the pair counts and, for each pair, the set of chunks that contain it;
#    after a merge only those chunks change, and only the pairs **next to** each merged
#    occurrence change count;
# 3. it finds the best pair with a **lazy heap**: old entries are fixed when they reach
#    the top.


# %%
from collections import Counter  # noqa: E402

chunk_counts = Counter(regex.findall(GPT4_SPLIT_PATTERN, shakespeare))
n_chunks = sum(chunk_counts.values())
print(f"{n_chunks:,} chunks, {len(chunk_counts):,} distinct; most common:",
      chunk_counts.most_common(6))
print(f"' the' occurs {chunk_counts[' the']:,} times: one distinct chunk, that weight")

# %% [markdown]
# The package's trainer is `train_merges` in `mlxllm/tokenizer/train.py`
# (`count_chunks`, in the same module, builds the table of distinct chunks). It takes
# that table, not the text. On §1.2's tiny sentence, 13 chunks are 8 distinct ones, and
# the first merge, `'a'` + `'t'`, is counted with the chunks' weights: `' cat'` and
# `' sat'` twice each, `' mat'` and `' hat'` once, 6 in all:

# %%
tiny_chunks = regex.findall(GPT4_SPLIT_PATTERN, tiny)
tiny_counts = Counter(chunk.encode("utf-8") for chunk in tiny_chunks)
print(f"{sum(tiny_counts.values())} chunks, {len(tiny_counts)} distinct:",
      dict(tiny_counts))
fast_vocab = {i: bytes([i]) for i in range(256)}  # train_merges extends it in place
fast_merges = train_merges(tiny_counts, 6, fast_vocab)
print("merges (left id, right id, new id):", fast_merges)
print("new tokens:", [fast_vocab[new].decode() for _, _, new in fast_merges])
weighted = sum(n * chunk.count(b"at") for chunk, n in tiny_counts.items())
assert fast_merges[0] == (ord("a"), ord("t"), 256) and weighted == 6
# the same merges as the plain algorithm, which recounts all 13 chunks every time
fast_pairs = [(fast_vocab[a], fast_vocab[b]) for a, b, _ in fast_merges]
assert fast_pairs == train_by_hand(tiny, 6, GPT4_SPLIT_PATTERN)

# %% [markdown]
# The fast trainer must give exactly the merges of the plain one. We check it on a slice
# (the plain one is too slow for more), with both split patterns:

# %%
text_20k = shakespeare[:20_000]
for pattern in (GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN):
    by_hand = train_by_hand(text_20k, 100, pattern)
    package = Tokenizer.train(text_20k, 256 + 100, pattern=pattern).merges
    assert by_hand == package, "the package must learn the plain algorithm's merges"
print("first 8 merges:", [(a.decode(), b.decode()) for a, b in package[:8]])

# %% [markdown]
# Now the whole play collection, with a 4,096-token vocabulary. We train on the first
# 90% and keep the rest to measure compression on text the tokenizer has not seen.

# %%
cut = int(len(shakespeare) * 0.9)
train_text, heldout_text = shakespeare[:cut], shakespeare[cut:]
tokenizer = Tokenizer.train(train_text, 4096, pattern=GPT4_SPLIT_PATTERN,
                            special_tokens=["<|endoftext|>"])
print(tokenizer)
longest = sorted(tokenizer.merges, key=lambda pair: len(pair[0] + pair[1]))[-8:]
print("longest tokens:", [(left + right).decode() for left, right in longest])
print("last merges:  ", [(a + b).decode() for a, b in tokenizer.merges[-6:]])
heldout_ids = tokenizer.encode(heldout_text)
print(f"held-out: {len(heldout_text.encode()):,} bytes -> {len(heldout_ids):,} tokens "
      f"({len(heldout_text.encode()) / len(heldout_ids):.2f} bytes per token)")
assert tokenizer.decode(heldout_ids) == heldout_text

# %% [markdown]
# The vocabulary can be inspected, saved to one readable text file and loaded back:

# %%
print(tokenizer.dump_vocab().splitlines()[300])
print(tokenizer.dump_vocab().splitlines()[4000])
with tempfile.TemporaryDirectory() as folder:
    tokenizer.save(Path(folder) / "shakespeare.tok")
    lines = (Path(folder) / "shakespeare.tok").read_text(encoding="utf-8").splitlines()
    print("\n".join(lines[:2] + ["..."] + lines[258:262] + ["..."] + lines[-3:]))
    loaded = Tokenizer.load(Path(folder) / "shakespeare.tok")
    assert loaded.encode(heldout_text) == heldout_ids

# %% [markdown]
# ## 1.7 Where the token boundaries fall
#
# Each coloured box is one token of the 4,096-token Shakespeare tokenizer. Frequent
# words and names are single tokens, often with their leading space; rare words are
# split into pieces.

# %%
def show_tokens(tokenizer: Tokenizer, text: str) -> HTML:
    colours = ["#fde2e4", "#cde7f0", "#e2f0cb", "#fff1c1", "#e4d9f5"]
    spans = []
    for k, token_id in enumerate(tokenizer.encode(text)):
        piece = html.escape(tokenizer.decode([token_id]))
        piece = piece.replace("\n", "↵<br>").replace(" ", "&nbsp;")
        style = f"background:{colours[k % 5]};padding:1px 0;border-radius:3px"
        spans.append(f'<span style="{style}" title="{token_id}">{piece}</span>')
    box = '<div style="font-family:monospace;line-height:1.9">'
    return HTML(box + "".join(spans) + "</div>")


passage = heldout_text[2000:2400]
display(show_tokens(tokenizer, passage))
print(f"{len(passage.encode())} bytes, {len(tokenizer.encode(passage))} tokens")

# %% [markdown]
# ## 1.8 Compression against vocabulary size
#
# Because training is greedy, the merges of a smaller vocabulary are exactly the
# **first** merges of a larger one. So one training run gives every size: keep the first
# `k` merges. How many bytes does a token cover on the held-out text as the vocabulary
# grows?

# %%
merge_ids = tokenizer.merge_ids
smaller = Tokenizer.train(train_text, 512, pattern=GPT4_SPLIT_PATTERN)
assert smaller.merges == tokenizer.merges[:256]
sizes, bytes_per_token = [], []
heldout_bytes = len(heldout_text.encode("utf-8"))
for n_merges in [0, 64, 128, 256, 512, 1024, 1536, 2048, 3072, 3839]:
    prefix = Tokenizer(merge_ids[:n_merges], pattern=GPT4_SPLIT_PATTERN)
    sizes.append(256 + n_merges)
    bytes_per_token.append(heldout_bytes / len(prefix.encode(heldout_text)))
    print(f"vocab {sizes[-1]:5}: {bytes_per_token[-1]:.2f} bytes/token")

fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(sizes, bytes_per_token, "o-")
ax.set_xscale("log", base=2)
ax.set_xlabel("vocabulary size (log scale)")
ax.set_ylabel("held-out bytes per token")
ax.set_title("Shakespeare: compression grows with the vocabulary, ever more slowly",
             fontsize=9)
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# The first few hundred merges (common letter pairs, frequent short words) give most of
# the gain; later merges make whole rarer words and help less and less. A bigger
# vocabulary also makes the model's embedding and output layers bigger (`V × C` each,
# Chapters [2](02_embedding.ipynb) and [5](05_next_token_prediction.ipynb)): that is the
# trade-off.
#
# ## 1.9 GPT-2's real tokenizer, checked against tiktoken
#
# GPT-2 ships its tokenizer as two files: `encoder.json` (token → id) and `vocab.bpe`
# (the 50,000 merges in rank order). Both write bytes as printable characters (a space
# is `Ġ`, a newline `Ċ`). `Tokenizer.from_gpt2_files` reads them, registers
# `<|endoftext|>` = 50256, and uses GPT-2's split pattern.

# %%
gpt2 = Tokenizer.from_gpt2_files(get_path("gpt2-vocab"), get_path("gpt2-merges"))
print(gpt2)
print("first merges:", gpt2.merges[:5])
ids_hello = gpt2.encode("Hello world! Tokenization is fun.<|endoftext|>",
                        allowed_special="all")
print(ids_hello, [gpt2.decode([i]) for i in ids_hello])

# %% [markdown]
# OpenAI's `tiktoken` is the reference implementation (in Rust). We build its GPT-2
# encoding from the same two local files with tiktoken's own loader (which expects the
# `#version` header line the official file has) and require identical ids on the whole
# of Shakespeare and on a string full of awkward Unicode.

# %%
import tiktoken  # noqa: E402
from tiktoken.load import data_gym_to_mergeable_bpe_ranks  # noqa: E402

os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local files; cache, download nothing
with tempfile.TemporaryDirectory() as folder:
    merges_text = Path(get_path("gpt2-merges")).read_text(encoding="utf-8")
    if not merges_text.startswith("#version"):
        merges_text = "#version: 0.2\n" + merges_text
    (Path(folder) / "vocab.bpe").write_text(merges_text, encoding="utf-8")
    ranks = data_gym_to_mergeable_bpe_ranks(str(Path(folder) / "vocab.bpe"),
                                            str(get_path("gpt2-vocab")))
reference = tiktoken.Encoding("gpt2", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                              special_tokens={"<|endoftext|>": 50256},
                              explicit_n_vocab=50257)

awkward = ("中文 العربية 👨‍👩‍👧 e\u0301 \t\t   x\n\n\ndef f(x):\n    return x**2"
           "\x00\x1b[0m I'M 1234567")
ours = gpt2.encode(shakespeare)
assert ours == reference.encode(shakespeare), "GPT-2 ids must equal tiktoken's"
assert gpt2.encode(awkward) == reference.encode(awkward)
assert gpt2.decode(ours) == shakespeare
print(f"Shakespeare: {len(ours):,} GPT-2 tokens, identical to tiktoken; "
      f"{len(shakespeare.encode()) / len(ours):.2f} bytes/token")
ours_bpt = heldout_bytes / len(heldout_ids)
gpt2_bpt = heldout_bytes / len(gpt2.encode(heldout_text))
print(f"our 4,096-token tokenizer on the held-out part: {ours_bpt:.2f} bytes/token, "
      f"GPT-2: {gpt2_bpt:.2f}")

# %% [markdown]
# The package also loads GPT-4's `cl100k_base` and GPT-4o's `o200k_base` rank files
# (`Tokenizer.from_tiktoken_file`), where the single bytes do not even have ids 0-255;
# the tests check both against tiktoken in the same way.
#
# ## 1.10 Speed
#
# `benchmarks/bench_tokenizer.py` compares, in one process and on one thread, training a
# 4,096-token vocabulary on Shakespeare against Hugging Face `tokenizers` (Rust) and
# against the plain recount algorithm of §1.4, and GPT-2 encoding of the whole corpus
# against `tiktoken` (Rust). "Cold" is a freshly loaded tokenizer, whose cache of chunk
# → ids is empty; "warm" encodes the text a second time. The cell below runs a quick
# version (one repetition, one timed naive merge, no memory measurement). Its times
# depend on the machine and on what else it is doing, so its output is not compared when
# the book is tested and changes from run to run; the cell asserts only what holds
# everywhere: the comparison ran, the ids matched tiktoken's, and the incremental
# trainer beats the recount by far.
#
# The full runs (`python benchmarks/bench_tokenizer.py`: best of 3, CPU time, one
# thread) are recorded with their date and machine in `benchmarks/README.md`: there the
# package trains faster than HF tokenizers and orders of magnitude faster than the
# naive recount, and encodes with GPT-2's rules slower than tiktoken when cold and about
# as fast when warm. A single quick run, like the one below, is noisier: on a busy
# machine it can land on either side of HF's time. Pure Python gets there by doing less
# work: distinct chunks, incremental counts, and a cache of chunk → ids that makes most
# chunks a single dictionary lookup.

# %% tags=["nbval-ignore-output"]
sys.path.insert(0, str(Path.cwd().parent / "benchmarks"))
import bench_tokenizer  # noqa: E402

rows = bench_tokenizer.run(repeat=1, naive_merges=1, memory=False)
print(bench_tokenizer.markdown(rows))
print()
print(bench_tokenizer.summary(rows))
by_task = {row.task: row for row in rows}
naive = by_task["train 4096: naive recount"]
assert naive.ratio > 50, "the incremental trainer must beat the recount"
assert all(row.cpu > 0 for row in rows)

# %% [markdown]
# ## Exercises
#
# Try each one before you open its solution (the "show" toggle under it). Every
# solution checks its answer with an `assert`, so it stays true as the package changes.
#
# **Exercise 1.1 (predict, then run).** Train `Tokenizer.train(tiny, 300,
# pattern=GPT4_SPLIT_PATTERN)` on §1.2's tiny text. Before running it, predict (a) the
# first merge, and whether it is the same as §1.2's, where the text was not split; and
# (b) whether you get the 300 tokens you asked for.

# %% tags=["hide-input"]
tiny_tokenizer = Tokenizer.train(tiny, 300, pattern=GPT4_SPLIT_PATTERN)
first = tiny_tokenizer.merges[0]
# (a) 'a' + 't': six times, all inside words (cat, sat, mat, hat), so the split
# changes nothing for it; it was §1.2's first merge too
assert first == (b"a", b"t") == (vocab[hand_merges[0][0]], vocab[hand_merges[0][1]])
# (b) no: merges never cross chunks, and once every distinct chunk ('the', ' cat', ...)
# is a single token there is no pair left to count, so training stops early
chunks = regex.findall(GPT4_SPLIT_PATTERN, tiny)
assert all(len(tiny_tokenizer.encode(chunk)) == 1 for chunk in chunks)
assert tiny_tokenizer.vocab_size < 300
print(f"first merge {first}; training stopped at {tiny_tokenizer.vocab_size} tokens")

# %% [markdown]
# **Exercise 1.2 (why special tokens must be allowed).** A web page you want to train
# on contains the characters `<|endoftext|>`. With GPT-2's tokenizer, how many tokens
# does `encode_ordinary` make of them? What does `encode` do with that text, and what
# would the model see if you passed `allowed_special="all"` to every document?

# %% tags=["hide-input"]
page = "Tokens such as <|endoftext|> end a document."
plain_ids = gpt2.encode_ordinary(page)
special_id = gpt2.special_tokens["<|endoftext|>"]
assert plain_ids == reference.encode_ordinary(page)  # tiktoken agrees
assert special_id not in plain_ids and gpt2.decode(plain_ids) == page
assert len(gpt2.encode_ordinary("<|endoftext|>")) == 7  # '<', '|', 'end', ...
try:
    gpt2.encode(page)  # refused: the text contains a special token
    raise AssertionError("encode must refuse a special token that is not allowed")
except ValueError:
    pass
# allowed everywhere, the page's own characters would become the real
# end-of-document id, and the model would think the document ends mid-sentence
assert gpt2.encode(page, allowed_special="all").count(special_id) == 1
print(f"as plain text: 7 ordinary tokens; allowed: the one control id {special_id}")

# %% [markdown]
# **Exercise 1.3 (compare vocabularies).** Count the tokens that GPT-2 (50,257 tokens,
# trained on web text) and our 4,096-token Shakespeare `tokenizer` need for
# `"O Romeo, Romeo! wherefore art thou Romeo?"` and for
# `"Download the dataset from GitHub and install PyTorch."`. Predict which tokenizer
# wins on each sentence before counting.

# %% tags=["hide-input"]
sentences = ["O Romeo, Romeo! wherefore art thou Romeo?",
             "Download the dataset from GitHub and install PyTorch."]
lengths = {s: (len(gpt2.encode(s)), len(tokenizer.encode(s))) for s in sentences}
for s, (n_gpt2, n_ours) in lengths.items():
    assert n_gpt2 == len(reference.encode(s))  # tiktoken counts the same
    print(f"GPT-2 {n_gpt2:2} tokens, Shakespeare {n_ours:2} tokens: {s!r}")
# a vocabulary 12 times smaller, but trained on the plays: ours wins on their words...
assert lengths[sentences[0]][1] < lengths[sentences[0]][0]
# ...and needs twice as many tokens for words it never saw, which GPT-2's web text had
assert lengths[sentences[1]][1] >= 2 * lengths[sentences[1]][0]

# %% [markdown]
# **Exercise 1.4 (implement decode).** A tokenizer has three merges, as
# `(left id, right id, new id)`: `(108, 111, 256)`, `(256, 119, 257)`,
# `(32, 257, 258)` (108 is `l`, 111 `o`, 119 `w`, 32 a space). Write
# `decode_merges(ids, merges)` from scratch: build the bytes of every token from the
# merges, join the tokens' bytes, then decode UTF-8. Check it on `[258, 101, 114]`
# against `Tokenizer(merges).decode`, and check that `encode(" lower")` gives those ids.

# %% tags=["hide-input"]
def decode_merges(ids: list[int], merges: list[tuple[int, int, int]]) -> str:
    token_bytes = {i: bytes([i]) for i in range(256)}  # the 256 base tokens
    for left, right, new_id in merges:  # in rank order: the parts already exist
        token_bytes[new_id] = token_bytes[left] + token_bytes[right]
    return b"".join(token_bytes[i] for i in ids).decode("utf-8", errors="replace")


three_merges = [(108, 111, 256), (256, 119, 257), (32, 257, 258)]
three = Tokenizer(three_merges, pattern=GPT4_SPLIT_PATTERN)
assert decode_merges([258, 101, 114], three_merges) == " lower"
assert three.decode([258, 101, 114]) == " lower"
assert three.encode(" lower") == [258, 101, 114]  # ' low' + 'e' + 'r'
print("decode_merges([258, 101, 114]) ->", repr(decode_merges([258, 101, 114],
                                                               three_merges)))

# %% [markdown]
# ## What we built
#
# - **Byte-level BPE** in `mlxllm.tokenizer`: 256 byte tokens plus learned merges, so
#   every string round-trips (`decode(encode(text)) == text`), with tables from id to
#   bytes (GPT-4 permutes the byte ids).
# - **Training** (`Tokenizer.train`): the merges of the plain algorithm (asserted
#   above), with deterministic ties, computed incrementally from distinct chunks, a pair
#   index and a lazy heap.
# - **Encoding** that applies merges lowest rank first inside regex chunks
#   (`GPT2_SPLIT_PATTERN`, `GPT4_SPLIT_PATTERN`), with a chunk cache; `encode_iterable`
#   for large files.
# - **Special tokens** refused unless allowed, matched longest first.
# - **GPT-2's real tokenizer** from its two files, **equal to tiktoken** on all of
#   Shakespeare; GPT-4 and GPT-4o rank files too; a readable, versioned save format.
#
# Next, [Chapter 2](02_embedding.ipynb) turns these ids into vectors.
