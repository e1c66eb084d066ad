"""Run a suite of attacks on one target: one shared scoring pass, then every attack, then the metrics."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import numpy as np

from tuneguard.attacks import attack_class, resolve_attacks
from tuneguard.attacks.base import AttackContext
from tuneguard.data import make_split
from tuneguard.errors import TuneguardError
from tuneguard.metrics import evaluate
from tuneguard.models import LoadedModel, load_model
from tuneguard.scoring import ScoringEngine

log = logging.getLogger(__name__)


def run_attacks(target: LoadedModel | str, members: list[str], nonmembers: list[str], *,
                attacks: str | list[str] = "all", reference: LoadedModel | str | None = None,
                params: dict[str, dict[str, Any]] | None = None, corpus: list[str] | None = None, n_shots: int = 7,
                seed: int = 0, batch_size: int = 8, max_length: int | None = None, n_boot: int = 1000,
                cache: bool = True, progress: bool = True, title: str | None = None) -> dict:
    """Attack ``target`` with known members and non-members; return the result dict the report writes.

    ``reference`` defaults to the base model the target was fine-tuned from (its run record or adapter config).
    ReCall / CON-ReCall shots are drawn (seeded) from the non-members / members and removed from the evaluation set
    of every attack, so all attacks are compared on the same texts. Texts with nothing to score are skipped, and a
    text one attack cannot score (NaN, e.g. no ReCall shot fits beside it) is left out of that attack's metrics; both
    are listed in ``skipped`` with the reason.
    """
    params = params or {}
    names = resolve_attacks(attacks)
    unknown = set(params) - set(names)
    if unknown:
        raise TuneguardError(f"parameters given for attack(s) not being run: {', '.join(sorted(unknown))}")
    instances = {n: attack_class(n)(**params.get(n, {})) for n in names}
    needs = set().union(*(a.needs for a in instances.values()))
    split = make_split(members, nonmembers)
    _check_class_sizes(len(split.members), len(split.nonmembers), "given")

    target = load_model(target) if isinstance(target, str) else target
    target_engine = ScoringEngine(target, batch_size=batch_size, max_length=max_length, cache=cache,
                                  progress=progress)
    reference_engine = None
    if "reference" in needs:
        reference = reference or target.base_ref
        if reference is None:
            raise TuneguardError(f"attack(s) {', '.join(n for n, a in instances.items() if 'reference' in a.needs)} "
                                 "need a reference model and the target records no base model: pass --reference")
        reference = load_model(reference) if isinstance(reference, str) else reference
        reference_engine = ScoringEngine(reference, batch_size=batch_size, max_length=max_length, cache=cache,
                                         progress=progress)

    rng = random.Random(seed)
    # (index in the caller's members / non-members list, text): reports name a text by its label and that index.
    pool_non, pool_mem = list(enumerate(split.nonmembers)), list(enumerate(split.members))
    non_shots = [t for _, t in _draw(rng, pool_non, n_shots)] if "nonmember_shots" in needs else []
    mem_shots = [t for _, t in _draw(rng, pool_mem, n_shots)] if "member_shots" in needs else []
    origin = np.array([i for i, _ in pool_mem + pool_non])
    texts = [t for _, t in pool_mem + pool_non]
    labels = np.array([1] * len(pool_mem) + [0] * len(pool_non))

    scored = target_engine.score(texts, desc="target")
    skipped = [{"index": int(origin[i]), "label": int(labels[i]), "reason": "no token to score after tokenisation",
                "text": texts[i][:80]} for i, s in enumerate(scored) if s.n == 0]
    keep = np.array([s.n > 0 for s in scored])
    origin = origin[keep]
    texts = [t for t, k in zip(texts, keep) if k]
    labels = labels[keep]
    _check_class_sizes(int(labels.sum()), int((1 - labels).sum()), "left to evaluate")
    n_truncated = sum(s.truncated for s, k in zip(scored, keep) if k)

    ctx = AttackContext(texts=texts, labels=labels, target=target_engine, reference=reference_engine,
                        nonmember_shots=non_shots, member_shots=mem_shots, corpus=corpus, seed=seed,
                        progress=progress)
    results, warnings, timing = {}, [], {}
    for name, attack in instances.items():
        t0 = time.perf_counter()
        out = attack.run(ctx)
        timing[name] = round(time.perf_counter() - t0, 3)
        ctx.results[name] = out
        finite = np.isfinite(out.scores)
        bad = np.flatnonzero(~finite)
        if len(bad):
            warnings.append(f"{name}: {len(bad)} texts got no finite score and are left out of its metrics")
            skipped += [{"index": int(origin[i]), "label": int(labels[i]), "text": texts[i][:80],
                         "reason": f"left out of {name}: no finite score" + (f" ({out.note})" if out.note else "")}
                        for i in bad]
        if min(int(labels[finite].sum()), int((1 - labels[finite]).sum())) < 2:
            # Keep the other attacks' results: this one alone cannot be evaluated.
            warnings.append(f"{name} is left out of the report: fewer than 2 members or 2 non-members got a finite "
                            "score" + (f" ({out.note})" if out.note else ""))
            continue
        results[name] = {"scores": out.scores, "raw": out.raw, "raw_name": out.raw_name, "labels": labels,
                         "params": attack.params, "note": out.note, "summary": attack.summary,
                         "metrics": evaluate(labels, out.scores, n_boot=n_boot, seed=seed)}
        if "cost" in out.extra:  # an attack's own cost breakdown (SPV-MIA's stages), kept in results.json
            results[name]["cost"] = out.extra["cost"]
    if not results:
        raise TuneguardError(f"no attack could be evaluated: {'; '.join(warnings)}")
    if n_truncated:
        warnings.append(f"{n_truncated} texts were longer than {target_engine.max_length} tokens and were truncated")
    if reference_engine and reference.tokenizer.get_vocab() != target.tokenizer.get_vocab():
        warnings.append(f"the reference {reference.ref} has another tokenizer than the target: each model scores "
                        "with its own, so reference-based scores compare per-token means over different tokens")
    if non_shots or mem_shots:
        warnings.append(f"{len(non_shots)} non-member and {len(mem_shots)} member texts were used as ReCall shots and "
                        "are not evaluated")
    engines = {"target": target_engine, **({"reference": reference_engine} if reference_engine else {})}
    return {
        "title": title or f"Membership inference against {target.ref}",
        "settings": {"target": target.ref, "reference": reference_engine.name if reference_engine else None,
                     "attacks": names, "params": {n: a.params for n, a in instances.items()}, "seed": seed,
                     "members": len(split.members), "nonmembers": len(split.nonmembers),
                     "evaluated": len(texts), "max_length": target_engine.max_length, "n_shots": n_shots,
                     "bootstrap": n_boot},
        "attacks": results,
        "skipped": skipped,
        "warnings": warnings,
        "shots": {"nonmember": non_shots, "member": mem_shots},
        "cost": {"seconds": timing,
                 "forward_passes": {k: e.forward_passes for k, e in engines.items()},
                 "model_calls": {k: e.batches for k, e in engines.items()}},
    }


def _draw(rng: random.Random, pool: list, n: int) -> list:
    """Remove and return ``n`` random items of ``pool`` (in place)."""
    if n >= len(pool) - 1:
        raise TuneguardError(f"cannot take {n} ReCall shots from {len(pool)} texts and keep 2 to evaluate: "
                             "lower --shots or add texts")
    picked = sorted(rng.sample(range(len(pool)), n), reverse=True)
    return [pool.pop(i) for i in picked][::-1]


def _check_class_sizes(n_members: int, n_nonmembers: int, when: str) -> None:
    if n_members < 2 or n_nonmembers < 2:
        raise TuneguardError(f"membership inference needs at least 2 members and 2 non-members ({when}: "
                             f"{n_members} members, {n_nonmembers} non-members)")
