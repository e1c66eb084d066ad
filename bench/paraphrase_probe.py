"""What anti-copy decoding does to the ``local`` paraphraser: verbatim overlap, meaning kept, gate pass rate, speed.

    python bench/paraphrase_probe.py                    # SmolLM2-135M-Instruct, 16 PubMed abstracts
    python bench/paraphrase_probe.py --texts 8 --variant 'n4-T0.5={"ban_ngram": 4, "temperature": 0.5}'

Each variant rewrites the same abstracts (the first ``--words`` words of each) once, uncached, with the same seed;
``off`` (no ban) is the baseline. Columns: mean word 3-gram overlap with the source (the gate's measure), the longest
copied word run (mean and max), MiniLM cosine similarity (the gate's embedder), the fraction passing the default
gate in one attempt, the output's length in words over the source's, and paraphrases per second (generation only;
the machine's other load counts). Writes every paraphrase and figure to ``--out`` after each variant; a rerun with
the same inputs measures only the variants not there yet.

Cost: on an idle 2-core machine a batch of 8 abstracts takes about 15 s without the ban, so the default grid
(6 variants of 16) takes a few minutes; with the machine's cores shared with other work it took 24 min (para/s
then says more about the other work than about the ban).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tuneguard.files import atomic_write_json, read_json
from tuneguard.paraphrase.gate import GateConfig, MiniLMEmbedder, QualityGate, longest_common_run, ngram_overlap, words
from tuneguard.paraphrase.local import LocalParaphraser
from tuneguard.report.table import format_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pubmed" / "pubmedqa_abstracts.jsonl"
VARIANTS = {  # the local paraphraser's parameters, over its defaults
    "off": {"ban_ngram": 0},
    "n3": {"ban_ngram": 3},
    "n4": {"ban_ngram": 4},
    "n5": {"ban_ngram": 5},
    "n4-T0.7": {"ban_ngram": 4, "temperature": 0.7},
    "n4-no-repeat-ban": {"ban_ngram": 4, "ban_repeats": False},
}


def abstracts(path: Path, count: int, n_words: int) -> list[str]:
    """The first ``n_words`` words of the first ``count`` abstracts."""
    with path.open() as fh:
        rows = [json.loads(line) for _, line in zip(range(count), fh)]
    return [" ".join(row["text"].split()[:n_words]) for row in rows]


def measure(texts: list[str], outputs: list[str | None], gate: QualityGate, seconds: float) -> dict:
    """The table's figures for one variant (a missing paraphrase counts as a failed one)."""
    pairs = [(words(t), words(o or "")) for t, o in zip(texts, outputs)]
    runs = [longest_common_run(a, b) for a, b in pairs]
    checks = gate.check(texts, outputs)
    sims = [c.similarity for c in checks if c.similarity is not None]
    return {
        "overlap3": float(np.mean([ngram_overlap(a, b, 3) for a, b in pairs])),
        "run_mean": float(np.mean(runs)), "run_max": int(max(runs)),
        "similarity": float(np.mean(sims)) if sims else None,
        "pass": float(np.mean([c.passed for c in checks])),
        "length": float(np.mean([len(b) / max(len(a), 1) for a, b in pairs])),
        "per_second": len(texts) / seconds, "seconds": seconds,
        "reasons": [c.reason for c in checks],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--words", type=int, default=60)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", action="append", default=[], metavar='NAME=JSON',
                        help="a variant instead of the default grid: local paraphraser parameters as a JSON object "
                             "(repeatable)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/tuneguard-bench/paraphrase_probe.json"))
    args = parser.parse_args(argv)

    variants = dict(v.split("=", 1) for v in args.variant)
    variants = {name: json.loads(spec) for name, spec in variants.items()} or VARIANTS
    texts = abstracts(args.data, args.texts, args.words)
    settings = {"data": str(args.data), "texts": args.texts, "words": args.words, "model": args.model,
                "seed": args.seed}
    # Each variant is saved as soon as it is measured; a rerun on the same inputs reuses the finished ones.
    previous = read_json(args.out) if args.out.is_file() else {}
    done = previous.get("variants", {}) if previous.get("settings") == settings else {}
    result = {"texts": texts, "settings": settings, "variants": {}}
    gate = QualityGate(GateConfig(), MiniLMEmbedder())
    loaded = None
    rows = []
    for name, options in variants.items():
        para = LocalParaphraser(model=loaded or args.model, seed=args.seed, batch_size=len(texts), cache=False,
                                progress=False, **options)
        params = para.params.to_dict() | {"model": args.model}  # every parameter: a changed default is a new run
        record = done.get(name)
        if record is None or record["params"] != params:
            loaded = para.loaded  # loaded once, shared by every variant
            t0 = time.perf_counter()
            outputs = para.paraphrase(texts)
            record = {"options": options, "params": params, **measure(texts, outputs, gate, time.perf_counter() - t0),
                      "paraphrases": outputs}
            print(f"{name}: done in {record['seconds']:.0f} s", file=sys.stderr)
        result["variants"][name] = record
        atomic_write_json(args.out, result)
        rows.append({"variant": name, "3-gram overlap": record["overlap3"], "run (mean)": record["run_mean"],
                     "run (max)": record["run_max"], "MiniLM sim": record["similarity"], "pass gate": record["pass"],
                     "length": record["length"], "para/s": record["per_second"]})
    print(format_table(rows, list(rows[0]), title=f"local paraphraser ({args.model}), {len(texts)} PubMed "
                                                  f"abstracts cut to {args.words} words"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
