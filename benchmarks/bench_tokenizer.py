"""Tokenizer speed, side by side in one process: mlxllm vs HF `tokenizers`, naive BPE, tiktoken.

    MLXLLM_DATA_DIR=/path/to/data python benchmarks/bench_tokenizer.py [--repeat 3]

1. Training to vocab 4096 on tinyshakespeare with the GPT-2 split: mlxllm's trainer, HF
   tokenizers' BpeTrainer (ByteLevel pre-tokenizer, which uses the same GPT-2 split), and the
   naive algorithm that recounts every pair of every chunk after each merge (as minbpe does).
   The naive one is far too slow to finish, so a few merges are timed and extrapolated.
2. GPT-2 encoding of the whole corpus: a freshly loaded mlxllm tokenizer (cold: empty chunk
   cache), the same again (warm), and tiktoken built from the same files; one thread.

Times are the best of --repeat runs, CPU and wall clock; the ratios use CPU time (all jobs run on
one thread, and on a shared machine wall time also counts other people's jobs). Peak memory is the
growth of the peak resident set during one run, in a fresh process. Prints a markdown table;
"ratio" is the time divided by its group's reference (mlxllm for training, tiktoken for encoding).
"""

import argparse
import gc
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one thread for HF tokenizers and tiktoken
os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")  # never cache or download anything

from mlxllm.data import get_path  # noqa: E402
from mlxllm.tokenizer import GPT2_SPLIT_PATTERN, Tokenizer  # noqa: E402
from mlxllm.tokenizer.patterns import Splitter  # noqa: E402

VOCAB_SIZE = 4096


def peak_memory_mb(task: str) -> float | None:
    """Growth of the peak resident set while `task` runs, in MB, measured in a fresh process
    (so memory freed by earlier runs cannot hide it); setup such as loading files is excluded."""
    result = subprocess.run(
        [sys.executable, __file__, "--memory-task", task], capture_output=True, text=True, check=True
    )
    peak = float(result.stdout.strip().splitlines()[-1])
    return None if peak != peak else peak  # nan: not measurable here


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _run_memory_task(task: str) -> None:
    text = Path(get_path("tinyshakespeare")).read_text(encoding="utf-8")
    if task == "train-mlxllm":
        run = lambda: train_mlxllm(text)  # noqa: E731
    elif task == "train-hf":
        run = lambda: train_hf(text)  # noqa: E731
    elif task == "encode-mlxllm":
        tokenizer = load_gpt2()
        run = lambda: tokenizer.encode_ordinary(text)  # noqa: E731
    else:
        tiktoken_gpt2 = load_tiktoken_gpt2(load_gpt2())
        gc.collect()
        run = lambda: tiktoken_gpt2.encode_ordinary(text)  # noqa: E731
    gc.collect()
    if Path("/proc/self/clear_refs").exists():  # Linux: reset the peak to the current RSS, run, read it
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_mb("VmRSS")
        run()
        print(_status_mb("VmHWM") - before)
    elif task.endswith("mlxllm"):  # elsewhere: Python allocations only (cannot see Rust peers)
        tracemalloc.start()
        run()
        print(tracemalloc.get_traced_memory()[1] / 2**20)
    else:
        print("nan")


def best_time(run, repeat: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of the fastest of `repeat` runs. CPU time of a one-thread job
    is what we compare: wall time on a shared machine also counts other people's jobs."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        best = min(best, (time.process_time() - cpu, time.perf_counter() - wall))
    return best


# ------------------------------------------------------------------------------------ training
def train_mlxllm(text: str) -> Tokenizer:
    return Tokenizer.train(text, VOCAB_SIZE, pattern=GPT2_SPLIT_PATTERN)


def train_hf(text: str):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([text], trainer=trainer)
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    return tokenizer


def naive_pair_counts(chunks: list[list[int]]) -> dict[tuple[int, int], int]:
    counts: dict[tuple[int, int], int] = {}
    for ids in chunks:  # every chunk of the corpus, as minbpe's RegexTokenizer does
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + 1
    return counts


def naive_merge_times(text: str, n_merges: int, final_tokenizer: Tokenizer) -> tuple[float, float]:
    """CPU seconds per merge of the naive algorithm: at the start (measured over `n_merges` merges
    on every chunk of the corpus) and at the end (one full recount over the chunks as the finished
    4096-token vocabulary leaves them: a lower bound for every merge)."""
    chunks = [list(chunk.encode("utf-8")) for chunk in Splitter(GPT2_SPLIT_PATTERN).findall(text)]
    start = time.process_time()
    next_id = 256
    for _ in range(n_merges):
        counts = naive_pair_counts(chunks)  # full recount after every merge
        pair = max(counts, key=counts.get)
        for index, ids in enumerate(chunks):
            merged, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
                    merged.append(next_id)
                    i += 2
                else:
                    merged.append(ids[i])
                    i += 1
            chunks[index] = merged
        next_id += 1
    per_merge_start = (time.process_time() - start) / n_merges

    final_chunks = [final_tokenizer.encode_ordinary(chunk) for chunk in Splitter(GPT2_SPLIT_PATTERN).findall(text)]
    start = time.process_time()
    counts = naive_pair_counts(final_chunks)
    max(counts, key=counts.get)
    per_merge_end = time.process_time() - start
    return per_merge_start, per_merge_end


# ------------------------------------------------------------------------------------ encoding
def load_gpt2() -> Tokenizer:
    return Tokenizer.from_gpt2_files(get_path("gpt2-vocab"), get_path("gpt2-merges"))


def load_tiktoken_gpt2(reference: Tokenizer):
    """tiktoken's GPT-2 encoding from the same local files (ranks = ids), no download."""
    import tiktoken

    ranks = {reference.vocab[token_id]: token_id for token_id in reference.byte_ids}
    ranks.update({left + right: new for (left, right), (_, _, new) in zip(reference.merges, reference.merge_ids)})
    return tiktoken.Encoding(
        "gpt2-local", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257,
    )


@dataclass
class Row:
    task: str
    cpu: float  # seconds
    wall: float  # seconds
    ratio: float  # CPU time / the CPU time of the group's reference
    memory: float | None  # MB
    note: str = ""


def run(repeat: int = 3, naive_merges: int = 3, memory: bool = True) -> list[Row]:
    """Time every task; `memory=False` skips the fresh-process memory measurements."""
    text = Path(get_path("tinyshakespeare")).read_text(encoding="utf-8")
    mb = len(text.encode("utf-8")) / 1e6
    measure = peak_memory_mb if memory else (lambda task: None)

    # training
    ours = train_mlxllm(text)
    assert ours.vocab_size == VOCAB_SIZE
    cpu_ours, wall_ours = best_time(lambda: train_mlxllm(text), repeat)
    cpu_hf, wall_hf = best_time(lambda: train_hf(text), repeat)
    start_rate, end_rate = naive_merge_times(text, naive_merges, ours)
    n_merges = VOCAB_SIZE - 256
    naive_low = n_merges * end_rate  # lower bound: every merge as cheap as the last one
    naive_mid = n_merges * (start_rate + end_rate) / 2
    rows = [
        Row("train 4096: mlxllm", cpu_ours, wall_ours, 1.0, measure("train-mlxllm"), "reference"),
        Row("train 4096: HF tokenizers", cpu_hf, wall_hf, cpu_hf / cpu_ours, measure("train-hf")),
        Row("train 4096: naive recount", naive_low, naive_low, naive_low / cpu_ours, None,
            f"extrapolated from {naive_merges} timed merges: a lower bound (midpoint estimate {naive_mid:.0f} s)"),
    ]

    # encoding
    tiktoken_gpt2 = load_tiktoken_gpt2(load_gpt2())
    expected = tiktoken_gpt2.encode_ordinary(text)
    cold = (float("inf"), float("inf"))
    for _ in range(repeat):
        tokenizer = load_gpt2()  # fresh, so its chunk cache is empty (loading is not timed)
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        ids = tokenizer.encode_ordinary(text)
        cold = min(cold, (time.process_time() - cpu, time.perf_counter() - wall))
        assert ids == expected
    assert tokenizer.encode_ordinary(text) == expected
    warm = best_time(lambda: tokenizer.encode_ordinary(text), repeat)
    reference = best_time(lambda: tiktoken_gpt2.encode_ordinary(text), repeat)
    rows += [
        Row("encode GPT-2: tiktoken", *reference, 1.0, measure("encode-tiktoken"),
            f"reference; {mb / reference[0]:.1f} MB/s"),
        Row("encode GPT-2: mlxllm cold", *cold, cold[0] / reference[0], measure("encode-mlxllm"),
            f"{mb / cold[0]:.1f} MB/s"),
        Row("encode GPT-2: mlxllm warm", *warm, warm[0] / reference[0], None, f"{mb / warm[0]:.1f} MB/s"),
    ]
    return rows


def markdown(rows: list[Row]) -> str:
    lines = [
        "| task | CPU s | wall s | ratio | peak memory (MB) | note |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        memory = "-" if row.memory is None else f"{row.memory:.0f}"
        lines.append(f"| {row.task} | {row.cpu:.3f} | {row.wall:.3f} | {row.ratio:.3g} | {memory} | {row.note} |")
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    by_task = {row.task: row for row in rows}
    hf = by_task["train 4096: HF tokenizers"].ratio
    naive = by_task["train 4096: naive recount"].ratio
    cold = by_task["encode GPT-2: mlxllm cold"].ratio
    warm = by_task["encode GPT-2: mlxllm warm"].ratio
    return (
        f"training: mlxllm takes {1 / hf:.2f}x HF's time (target <= 1.0) and is at least "
        f"{naive:.0f}x faster than the naive recount (target >= 500)\n"
        f"encoding: cold {cold:.2f}x tiktoken's time (target <= 2.5), warm {warm:.2f}x (target <= 1.5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--naive-merges", type=int, default=3, help="naive merges to time")
    parser.add_argument("--memory-task", help=argparse.SUPPRESS)  # used by peak_memory_mb
    args = parser.parse_args()
    if args.memory_task:
        _run_memory_task(args.memory_task)
        return
    rows = run(args.repeat, args.naive_merges)
    mb = Path(get_path("tinyshakespeare")).stat().st_size / 1e6
    print(f"tinyshakespeare: {mb:.2f} MB; {platform.machine()}, Python {platform.python_version()}; "
          f"best of {args.repeat}; one thread; ratio = CPU time / the group's reference\n")
    print(markdown(rows))
    print()
    print(summary(rows))


if __name__ == "__main__":
    main()
