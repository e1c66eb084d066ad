"""Privacy-utility experiments: datasets × regimes (pretrained, full FT, LoRA, SOFT at several ratios, DP-SGD) ×
attacks, from one TOML file; every cell is run once, saved, and skipped on a re-run.

Output (in the experiment's ``out`` directory): ``results.json``, ``table1.txt`` (the SOFT paper's Table 1 layout:
attacks + their average as rows, regimes as columns, one block per dataset, utility beneath), ``tradeoff.png``
(average AUC against held-out perplexity, with the SOFT ratio sweep as a line) and ``report.html``.
"""

from __future__ import annotations

import logging
import math
import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneguard.attacks import run_attacks
from tuneguard.data import clean_texts, load_texts
from tuneguard.data.stdlib import stdlib_docstrings
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_json, read_json
from tuneguard.models import LoadedModel, load_model
from tuneguard.scoring import ScoringEngine
from tuneguard.train import TrainConfig, finetune

log = logging.getLogger(__name__)

REGIME_KINDS = ("pretrained", "full", "lora", "soft", "dp")


@dataclass
class Dataset:
    """One domain: where its texts are and how many members / non-members to draw."""

    name: str
    path: str
    members: int = 100
    nonmembers: int = 100
    column: str | None = None


@dataclass
class Regime:
    """One column of the table: how the target is obtained from the base model."""

    name: str
    kind: str
    train: dict = field(default_factory=dict)  # TrainConfig overrides
    options: dict = field(default_factory=dict)  # kind-specific: soft ratio/paraphraser, dp epsilon


@dataclass
class Experiment:
    """A parsed experiment file."""

    name: str
    model: str
    out: Path
    datasets: list[Dataset]
    regimes: list[Regime]
    train: dict = field(default_factory=dict)
    attacks: str | list[str] = "all"
    attack_options: dict = field(default_factory=dict)
    general_texts: int = 32
    seed: int = 0


def load_experiment(path: str | Path) -> Experiment:
    """Parse an experiment TOML file (paths inside it are relative to the file)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TuneguardError(f"experiment file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise TuneguardError(f"{path} is not valid TOML: {exc}") from None
    here = path.resolve().parent
    try:
        datasets = [Dataset(**{**d, "path": str((here / d["path"]).resolve())}) for d in raw["datasets"]]
        regimes = []
        for name, spec in raw["regimes"].items():
            spec = dict(spec)
            kind = spec.pop("kind", name)
            if kind not in REGIME_KINDS:
                raise TuneguardError(f"{path}: regime {name!r} has unknown kind {kind!r} "
                                     f"(use one of {', '.join(REGIME_KINDS)})")
            train = spec.pop("train", {})
            if kind == "soft":  # one column per ratio
                for ratio in spec.pop("ratios", [spec.pop("ratio", 0.5)]):
                    regimes.append(Regime(f"{name} ρ={ratio:g}", kind, train, {**spec, "ratio": ratio}))
            else:
                regimes.append(Regime(name, kind, train, spec))
        return Experiment(name=raw.get("name", path.stem), model=raw["model"],
                          out=(here / raw.get("out", f"runs/{path.stem}")).resolve(), datasets=datasets,
                          regimes=regimes, train=raw.get("train", {}), attacks=raw.get("attacks", "all"),
                          attack_options=raw.get("attack_options", {}),
                          general_texts=raw.get("general_texts", 32), seed=raw.get("seed", 0))
    except KeyError as exc:
        raise TuneguardError(f"{path}: missing required key {exc.args[0]!r}") from None
    except TypeError as exc:
        raise TuneguardError(f"{path}: {exc}") from None


def perplexity(engine: ScoringEngine, texts: list[str]) -> float:
    """Token-weighted perplexity ``exp(Σ NLL / Σ tokens)`` (cached passes: free for texts already scored)."""
    scores = engine.score(texts, desc="perplexity")
    tokens = sum(s.n for s in scores)
    return math.exp(-sum(float(s.logprobs.sum()) for s in scores) / max(tokens, 1))


def run_experiment(exp: Experiment, *, progress: bool = True) -> dict:
    """Run every (dataset, regime) cell not yet saved, then write the table, the trade-off plot and the report."""
    base = load_model(exp.model)
    general = stdlib_docstrings(exp.general_texts, seed=exp.seed + 1)
    cells: dict[str, dict[str, dict]] = {}
    for ds in exp.datasets:
        members, nonmembers = _draw(ds, exp.seed)
        cells[ds.name] = {}
        for regime in exp.regimes:
            cell_dir = exp.out / _slug(ds.name) / _slug(regime.name)
            done = cell_dir / "cell.json"
            if done.is_file():
                cells[ds.name][regime.name] = read_json(done)
                continue
            log.info("cell %s / %s", ds.name, regime.name)
            target, extra = _target(exp, regime, base, members, cell_dir, progress)
            result = run_attacks(target, members, nonmembers, attacks=exp.attacks, reference=base,
                                 seed=exp.seed, progress=progress, **exp.attack_options)
            engine = ScoringEngine(target, max_length=exp.attack_options.get("max_length"), progress=progress)
            cell = {"dataset": ds.name, "regime": regime.name, "kind": regime.kind,
                    "auc": {n: r["metrics"]["auc"] for n, r in result["attacks"].items()},
                    "tpr_at_1pct": {n: r["metrics"]["tpr"].get("0.01") for n, r in result["attacks"].items()},
                    "ppl_domain": perplexity(engine, nonmembers), "ppl_general": perplexity(engine, general),
                    "warnings": result["warnings"], **extra}
            cell["average_auc"] = float(np.nanmean(list(cell["auc"].values())))
            atomic_write_json(done, cell)
            cells[ds.name][regime.name] = cell
    summary = {"name": exp.name, "model": exp.model, "regimes": [r.name for r in exp.regimes], "cells": cells}
    atomic_write_json(exp.out / "results.json", summary)
    summary["paths"] = write_experiment_report(exp, summary)
    return summary


def _draw(ds: Dataset, seed: int) -> tuple[list[str], list[str]]:
    texts = clean_texts(load_texts(ds.path, column=ds.column), name=ds.name).texts
    need = ds.members + ds.nonmembers
    if len(texts) < need:
        raise TuneguardError(f"dataset {ds.name} has {len(texts)} texts, fewer than the {need} asked for")
    picked = random.Random(seed).sample(texts, need)
    return picked[:ds.members], picked[ds.members:]


def _target(exp: Experiment, regime: Regime, base: LoadedModel, members: list[str], cell_dir: Path,
            progress: bool) -> tuple[LoadedModel, dict]:
    """The model this regime produces from the base model, plus facts worth a column (epsilon, paraphrases)."""
    config = TrainConfig(**{"seed": exp.seed, **exp.train, **regime.train,
                            **({"method": regime.kind} if regime.kind in ("full", "lora") else {})})
    if regime.kind == "pretrained":
        return base, {}
    if regime.kind in ("full", "lora"):
        return finetune(base, members, cell_dir / "model", config, progress=progress).model, {}
    if regime.kind == "dp":
        from tuneguard.defenses.dp_sgd import DPConfig, dp_finetune

        dp = DPConfig(target_epsilon=float(regime.options.get("epsilon", 8.0)),
                      max_grad_norm=float(regime.options.get("max_grad_norm", 1.0)))
        lora = TrainConfig(**{**config.to_dict(), "method": "lora"})
        run = dp_finetune(base, members, cell_dir / "model", lora, dp, progress=progress)
        return run.model, {"epsilon_spent": run.record["dp"]["epsilon_spent"]}
    from tuneguard.defenses.soft import run_soft
    from tuneguard.paraphrase.gate import GateConfig

    options = dict(regime.options)
    method = options.pop("method", "full")  # SOFT changes the data; it is compared with the run it protects
    if isinstance(options.get("gate"), dict):  # a TOML table of GateConfig fields
        options["gate"] = GateConfig(**options["gate"])
    soft = run_soft(base, members, cell_dir / "soft",
                    train=TrainConfig(**{**config.to_dict(), "method": method}), progress=progress, **options)
    return soft.model, {"soft": soft.summary, "soft_ratio": regime.options["ratio"]}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_experiment_report(exp: Experiment, summary: dict) -> dict[str, Path]:
    """table1.txt, tradeoff.png and report.html from the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tuneguard.files import atomic_write_text
    from tuneguard.report import format_table, html_page, html_table, img_tag

    regimes, blocks, html_blocks = summary["regimes"], [], []
    for ds, row_cells in summary["cells"].items():
        attacks = list(next(iter(row_cells.values()))["auc"])
        rows = [{"attack": a, **{r: _fmt(row_cells[r]["auc"].get(a)) for r in regimes}} for a in attacks]
        rows.append({"attack": "average", **{r: _fmt(row_cells[r]["average_auc"]) for r in regimes}})
        rows.append({"attack": "perplexity (domain)", **{r: f"{row_cells[r]['ppl_domain']:.2f}" for r in regimes}})
        rows.append({"attack": "perplexity (general)", **{r: f"{row_cells[r]['ppl_general']:.2f}" for r in regimes}})
        members = next(d.members for d in exp.datasets if d.name == ds)
        rows.append({"attack": "texts trained on", **{r: _trained_on(row_cells[r], members) for r in regimes}})
        columns = ["attack", *regimes]
        blocks.append(format_table(rows, columns, title=f"{ds}: AUC per attack (lower protects better)"))
        html_blocks.append((f"{ds}", html_table(rows, columns)))
    table = "\n\n".join(blocks)
    out = exp.out
    atomic_write_text(out / "table1.txt", table + "\n")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, (ds, row_cells) in enumerate(summary["cells"].items()):
        colour = f"C{i}"
        families: dict[str, list[dict]] = {}  # one ρ sweep per SOFT regime ("soft ρ=0.5" -> "soft")
        for c in row_cells.values():
            if c["kind"] == "soft":
                families.setdefault(c["regime"].split(" ρ=")[0], []).append(c)
        for j, (family, cells) in enumerate(families.items()):
            sweep = sorted(cells, key=lambda c: c["soft_ratio"])
            ax.plot([c["ppl_domain"] for c in sweep], [c["average_auc"] for c in sweep], ("-o", "--o", ":o")[j % 3],
                    color=colour, label=f"{ds}: {family} (ρ sweep)")
            for c in sweep:
                ax.annotate(("" if j == 0 else f"{family} ") + f"ρ={c['soft_ratio']:g}",
                            (c["ppl_domain"], c["average_auc"]), fontsize=7,
                            textcoords="offset points", xytext=(4, 4))
        for c in row_cells.values():
            if c["kind"] != "soft":
                ax.scatter(c["ppl_domain"], c["average_auc"], color=colour, marker="s")
                ax.annotate(c["regime"], (c["ppl_domain"], c["average_auc"]), fontsize=7,
                            textcoords="offset points", xytext=(4, -8))
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("held-out perplexity (same domain, lower = more useful)")
    ax.set_ylabel("average attack AUC (lower = more private)")
    ax.set_title(exp.name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = out / "tradeoff.png"
    fig.savefig(png, dpi=130)
    plt.close(fig)
    page = html_page(f"{exp.name}: privacy and utility",
                     [*html_blocks, ("Privacy-utility trade-off", img_tag(png))],
                     settings={"model": exp.model, "attacks": exp.attacks, "train": exp.train, "seed": exp.seed,
                               "datasets": [vars(d) for d in exp.datasets]})
    atomic_write_text(out / "report.html", page)
    return {"table": out / "table1.txt", "plot": png, "html": out / "report.html", "json": out / "results.json"}


def _trained_on(cell: dict, members: int) -> str:
    """How many texts the cell's model was fine-tuned on; for SOFT, how many of them are paraphrases (the selected
    texts whose paraphrase failed the quality gate are dropped, which protects them too but is not paraphrasing)."""
    if cell["kind"] == "pretrained":
        return "0"
    if cell["kind"] == "soft":
        soft = cell["soft"]
        return f"{soft['train_size']} ({soft['paraphrased']} para.)"
    return str(members)


def _fmt(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
