"""Memory of corpora: preparing a 200 MB corpus with BPE (peak RSS, MB/s), training from a token
directory of 1 GB against one of 10 MB (peak RSS), and an in-memory text corpus (bytes per
character at the peak, against 0.1's Python list and int64 tensor). Each measurement runs in
its own process (peak RSS from wait4). Prints a JSON report.

    python benchmarks/data_memory.py [--corpus-mb 200] [--big-mb 1024] [--workdir DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np


def measured(code: str) -> dict:
    """Run `code` in a fresh Python; its peak RSS (MB), seconds and the JSON it printed last."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise RuntimeError(f"the measured process failed ({status}):\n{code}")
    result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "seconds": round(time.perf_counter() - t0, 1), **result}


def generated_corpus(path: Path, mb: int, seed: int = 0) -> None:
    """English-like text: Zipf-distributed words from a 20,000-word lexicon, lines of 5-15 words."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    weights = 1 / np.arange(1, 27) ** 0.9
    lexicon = ["".join(rng.choice(letters, size=rng.integers(2, 10), p=weights / weights.sum()))
               for _ in range(20_000)]
    zipf = 1 / np.arange(1, len(lexicon) + 1)
    zipf /= zipf.sum()
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < mb * 1_000_000:
            words = rng.choice(len(lexicon), size=200_000, p=zipf)
            lengths = rng.integers(5, 16, size=len(words) // 5)
            out, i = [], 0
            for n in lengths:
                out.append(" ".join(lexicon[w] for w in words[i:i + n]) + ".")
                i += n
                if i >= len(words):
                    break
            f.write("\n".join(out) + "\n")


def token_dir(path: Path, mb: int, vocab: int = 4096) -> None:
    """A token directory of `mb` MB of random uint16 tokens (its tokenizer: `vocab` characters)."""
    from lmwidget.data.chars import CharTokenizer
    from lmwidget.data.tokenfiles import TokenWriter
    from lmwidget.data.tokens import saved

    tok = CharTokenizer(chr(0x100 + i) for i in range(vocab))
    writer = TokenWriter(path, vocab)
    rng = np.random.default_rng(0)
    total = mb * (1 << 20) // 2
    for split, n in (("train", total - total // 10), ("val", total // 10)):
        for start in range(0, n, 1 << 25):
            ids = rng.integers(0, vocab, size=min(1 << 25, n - start), dtype=np.uint16)
            writer.write(split, ids, 2 * len(ids))
    writer.close(saved(tok), source="random tokens")


TRAIN = """
import json, lmwidget
run = lmwidget.train(data={data!r}, max_steps={steps}, display=False, n_layer=2, n_embd=64, n_head=4,
                     block_size=256, batch_size=32, eval_interval=100, eval_iters=4)
run.wait()
print(json.dumps({{"state": run.state, "tokens_per_s": round(float(run.history["tokens_per_sec"].median()))}}))
"""

IN_MEMORY = """
import json, resource, threading, time, psutil, torch
import lmwidget
from lmwidget.data.chars import CharTokenizer
from lmwidget.data.dataset import Dataset
from lmwidget.data.text import load_text
proc, peak, done = psutil.Process(), [0], threading.Event()
def sampler():  # the peak of this process' RSS, every millisecond (when the GIL allows)
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.001)
base = proc.memory_info().rss
threading.Thread(target=sampler, daemon=True).start()
text = load_text({path!r})  # read from the file, as train(data=path) does
if {old}:  # 0.1's way: a Python list of ids, then an int64 tensor
    tok = CharTokenizer.from_text(text)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
else:
    data = Dataset(text)
done.set()
time.sleep(0.01)
peak = max(peak[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # the kernel's record too
print(json.dumps({{"characters": len(text), "rss_before_mb": round(base / 2**20, 1),
                  "bytes_per_character": round((peak - base) / len(text), 2)}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-mb", type=int, default=200, help="the generated corpus prepared with BPE")
    parser.add_argument("--big-mb", type=int, default=1024, help="the large token directory")
    parser.add_argument("--steps", type=int, default=200, help="training steps from each token directory")
    parser.add_argument("--workdir", help="where the files go (default: a temporary directory)")
    parser.add_argument("--parts", default="prepare,train,in_memory", help="which measurements, comma-separated")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lmwidget-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report = {"import_lmwidget": measured("import json, lmwidget; print(json.dumps({}))")}

    parts = args.parts.split(",")
    corpus = work / "corpus.txt"
    if not corpus.is_file() or corpus.stat().st_size < args.corpus_mb * 1_000_000:
        generated_corpus(corpus, args.corpus_mb)
    size = corpus.stat().st_size
    prep = None if "prepare" not in parts else measured(f"""
        import json, lmwidget
        lmwidget.prepare({str(corpus)!r}, {str(work / 'bpe')!r}, tokenizer="bpe", vocab_size=4096, progress=False)
        print(json.dumps({{}}))
        """)
    if prep:
        meta = json.loads((work / "bpe" / "meta.json").read_text())
        report["prepare_bpe"] = {**prep, "corpus_mb": round(size / 1e6, 1), "mb_per_s": round(size / 1e6 / prep["seconds"], 2),
                                 "tokens": sum(s["tokens"] for s in meta["splits"].values())}

    for name, mb in (("small", 10), ("big", args.big_mb)) if "train" in parts else ():
        token_dir(work / name, mb)
        report[f"train_{name}"] = {"token_file_mb": mb, **measured(TRAIN.format(data=str(work / name), steps=args.steps))}
    if "train" in parts:
        report["train_rss_difference_mb"] = round(report["train_big"]["peak_rss_mb"] - report["train_small"]["peak_rss_mb"], 1)

    text20 = work / "text20.txt"
    with open(corpus, encoding="utf-8") as f, open(text20, "w", encoding="utf-8") as g:
        g.write(f.read(20_000_000))
    for label, old in (("in_memory_0.1", True), ("in_memory_now", False)) if "in_memory" in parts else ():
        report[label] = measured(IN_MEMORY.format(path=str(text20), old=old))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
