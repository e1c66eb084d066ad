"""Issue 26's measurement in one command: `tuneguard defend compare` on 256 + 256 PubMed abstracts (SmolLM2-135M,
LoRA at bench/frontier_mini.toml's settings: 3 epochs, lr 1e-3, batch 8, 96 tokens), every default candidate, target
TPR at 1% FPR <= 5% (256 shadow non-members measure it).

    python bench/defend_compare.py                          # the measurement (resumable: finished cells are reused)
    python bench/defend_compare.py --estimate-only          # the time it will take, and stop
    python bench/defend_compare.py --device cuda            # on a GPU; any other `defend compare` option passes through
    python bench/defend_compare.py --preset tiny            # tiny-gpt2, 24 abstracts, 2 candidates: the pipeline only

Runs under --out (default /tmp/tuneguard-bench/defend_compare_<preset>) and, for the pubmed preset, writes
bench/results/defend_compare_pubmed.json, .md and .png (the comparison, its report and the frontier plot).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

from tuneguard.cli import main as cli
from tuneguard.files import atomic_write_json, atomic_write_text, read_json
from tuneguard.report.compare import compare_markdown

HERE = Path(__file__).resolve().parent
PUBMED = HERE.parents[1] / "shared" / "data" / "pubmed" / "pubmedqa_abstracts.jsonl"
PRESETS = {
    # 512 texts split in half: 256 shadow members, 256 non-members.
    "pubmed": ["--model", "smollm2-135m", "--limit", "512", "--target", "tpr@1%<=0.05", "--epochs", "3", "--lr",
               "1e-3", "--batch-size", "8", "--max-length", "96"],
    "tiny": ["--model", "tiny-gpt2", "--limit", "24", "--target", "auc<=0.6", "--candidates", "plain,dp-eps8",
             "--epochs", "1", "--lr", "1e-2", "--batch-size", "4", "--max-length", "32", "--bootstrap", "50"],
}
RESULTS = {"pubmed": HERE / "results" / "defend_compare_pubmed"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="pubmed")
    parser.add_argument("--data", type=Path, default=PUBMED, help="default: %(default)s")
    parser.add_argument("--out", type=Path, help="default: /tmp/tuneguard-bench/defend_compare_<preset>")
    args, passed = parser.parse_known_args(argv)
    if not args.data.is_file():
        parser.error(f"{args.data} does not exist: the corpora live in ../shared/data beside the project")
    out = args.out or Path(f"/tmp/tuneguard-bench/defend_compare_{args.preset}")
    # Options given on this command line come after the preset's, so they win (argparse keeps the last).
    rc = cli(["defend", "compare", "--data", str(args.data), *PRESETS[args.preset], *passed, "--out", str(out)])
    results = RESULTS.get(args.preset)
    if rc or results is None or not (out / "compare.json").is_file() or "--estimate-only" in passed:
        return rc
    comparison = read_json(out / "compare.json")
    plot = shutil.copyfile(out / "frontier.png", results.with_suffix(".png"))
    atomic_write_json(results.with_suffix(".json"), comparison)
    title, _, rest = compare_markdown(comparison, plot.name).partition("\n")
    command = shlex.join(["python", "bench/defend_compare.py", *(sys.argv[1:] if argv is None else argv)])
    atomic_write_text(results.with_suffix(".md"), f"{title}\n\nCommand: `{command}`\n{rest}")
    print(f"results: {results.with_suffix('.json')}, {results.with_suffix('.md')}, {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
