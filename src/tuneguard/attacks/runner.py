"""Run a suite of attacks on one target: checks, one shared scoring pass, then every attack, then the metrics."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from tuneguard.attacks import ALL_ATTACKS, ATTACKS, DEFAULT_SUITE, NO_REFERENCE, make_attacks, resolve_suite
from tuneguard.attacks.attacker_data import check_attacker_data
from tuneguard.attacks.base import TARGET_TEXTS, Attack, AttackContext, Pass
from tuneguard.attacks.options import DEFAULTS
from tuneguard.attacks.result import AttackResult, MIAResult
from tuneguard.attacks.run_record import record_path, recorded_base, run_record, training_window
from tuneguard.attacks.shadows import ShadowScorer, ShadowSpec, target_recipe, train_shadows
from tuneguard.data import Split, load_texts, make_split
from tuneguard.errors import TuneguardError
from tuneguard.metrics import evaluate
from tuneguard.models import LoadedModel, as_loaded, reference_of
from tuneguard.scoring import ScoringEngine
from tuneguard.scoring.engine import check_batching


def run_attacks(target: LoadedModel | str, members: list[str], nonmembers: list[str], *,
                attacks: str | list[str] = DEFAULT_SUITE, reference: LoadedModel | str | None = None,
                params: dict[str, dict[str, Any]] | None = None, corpus: list[str] | str | Path | None = None,
                n_shots: int = DEFAULTS.n_shots, seed: int = 0, batch_size: int = DEFAULTS.batch_size,
                batch_tokens: int | None = DEFAULTS.batch_tokens, max_length: int | None = DEFAULTS.max_length,
                n_boot: int = DEFAULTS.n_boot, cache: bool = True, progress: bool = True, title: str | None = None,
                shadows: ShadowSpec | None = None) -> MIAResult:
    """Attack ``target`` with known members and non-members; return the result the report writes.

    ``attacks`` defaults to the CLI's suite (``fast``: every attack that needs no pass beyond the target's and the
    reference's); ``"all"`` runs every attack. ``n_shots``, ``batch_size``, ``batch_tokens``, ``max_length`` and
    ``n_boot`` default to their declarations (:class:`tuneguard.attacks.options.AttackOptions`), which the command
    line and the experiment file read too.

    Before any model loads: every attack's parameters and needs are checked (a reference model, a corpus, a prompt
    pool, enough texts for the shots), and the attacker's own data (``corpus``, a file or a list; SPV-MIA's prompt
    pool and reference data) is refused when it holds an evaluated text.
    ``reference`` defaults to the base model the target was fine-tuned from (its run record or adapter config);
    without either, a suite that allows it (``fast``) leaves out the attacks needing one (``settings["left_out"]``
    and a warning say which and why) and any other attack needing one is refused; when
    it is the target itself, the attacks needing it are marked ``not_applicable``; for the attacks comparing target
    and reference token by token (``same_tokens``), a reference that tokenises an evaluated text differently is
    refused before any forward pass. Texts are scored up to
    ``max_length`` tokens, by default the window the target was trained on (its run record), else the model's
    context; a PEFT adapter without a run record (trained elsewhere) is refused without ``max_length``: its training
    window is unknown, and its model's whole context would dilute the signal. What such a target's report rests on
    without a record (its base, the window, the dtype) is listed in ``settings["read_not_recorded"]``.
    ``shadows`` (:class:`tuneguard.attacks.shadows.ShadowSpec`): train (or reuse) shadow fine-tunes of the target's
    base with its recipe on the population given, refused when it holds an evaluated text, and add the attacks over
    them (RMIA, LiRA, offline); ``settings["shadows"]`` says what they are and ``cost["shadows"]`` what training them
    cost. ReCall / CON-ReCall shots are drawn (seeded) from the non-members / members and removed from the
    evaluation set of every attack, so all attacks are compared on the same texts. Texts with nothing to score are
    skipped, and a text one attack cannot score (NaN, e.g. no ReCall shot fits beside it) is left out of that
    attack's metrics; both are listed in ``skipped`` with the reason. ``cost`` holds the forward passes per model,
    per attack the passes it added (the target's pass of every text runs before the first attack), and, for the
    attacks of ``all`` not run, the passes each would add and what ``all`` would spend (:func:`not_run_cost`).
    Scoring batches hold ``batch_size`` texts, or up to ``batch_tokens`` padded tokens when given. Under
    ``accelerate launch`` every process runs this with the same arguments: the forward passes are sharded over the
    processes and every process gets every score (the caller writes from the main process only).
    """
    suite = resolve_suite(attacks, reference=reference is not None or bool(recorded_base(target)),
                          shadows=shadows is not None)
    instances = make_attacks(suite, params)
    names = list(instances)
    check_batching(batch_size, batch_tokens)
    needs = set().union(*(a.needs for a in instances.values()))
    split = make_split(members, nonmembers)
    _check_class_sizes(len(split.members), len(split.nonmembers), "given")
    if max_length is None and _plain_adapter(target):
        raise TuneguardError(f"{_name(target)} is a PEFT adapter without a tuneguard run record, so the window it was "
                             "trained on is unknown: pass --score-max-length N (max_length=N), its training max length "
                             "in tokens; its model's whole context would dilute the membership signal")
    if "shadows" in needs and shadows is None:
        raise TuneguardError(f"{', '.join(n for n, a in instances.items() if 'shadows' in a.needs)} need shadow "
                             "models: pass --shadows K --population FILE (texts from the target's distribution, "
                             "disjoint from the evaluated ones)")
    if "reference" in needs and reference is None and not recorded_base(target):
        raise TuneguardError(f"attack(s) {', '.join(n for n, a in instances.items() if 'reference' in a.needs)} "
                             "need a reference model and the target records no base model: pass --reference")
    if "corpus" in needs and not corpus:
        raise TuneguardError(f"{', '.join(n for n, a in instances.items() if 'corpus' in a.needs)} needs a "
                             "reference corpus for token frequencies: pass --corpus FILE")
    corpus_name = f" ({Path(corpus).name})" if isinstance(corpus, (str, Path)) else ""
    corpus = load_texts(corpus) if isinstance(corpus, (str, Path)) else corpus
    warnings = _check_attacker_data(instances, corpus, corpus_name, split)
    population, recipe = None, None
    if shadows is not None:
        population = shadows.texts()
        near = check_attacker_data(shadows.source, population, split.members, split.nonmembers)
        warnings += [near] if near else []
        recipe = shadows.recipe or target_recipe(target)  # refused now, before any model loads
    if suite.left_out:  # today only for want of a reference (NO_REFERENCE)
        warnings.append(f"left out {', '.join(suite.left_out)}, the attacks comparing the target with a reference "
                        f"(usually the strongest against a fine-tuned model): each {NO_REFERENCE}; pass --reference "
                        "(e.g. the base model it was fine-tuned from) to run them")
    rng = random.Random(seed)
    # (index in the caller's members / non-members list, text): reports name a text by its label and that index.
    pool_non, pool_mem = list(enumerate(split.nonmembers)), list(enumerate(split.members))
    non_shots = [t for _, t in _draw(rng, pool_non, n_shots)] if "nonmember_shots" in needs else []
    mem_shots = [t for _, t in _draw(rng, pool_mem, n_shots)] if "member_shots" in needs else []

    target = as_loaded(target)
    window = _scoring_window(target, max_length)
    batching = {"batch_size": batch_size, "batch_tokens": batch_tokens, "cache": cache, "progress": progress,
                "distributed": True}
    target_engine = ScoringEngine(target, max_length=window["max_length"], **batching)
    window["max_length"] = target_engine.max_length
    reference_engine = not_applicable = None
    if "reference" in needs:
        reference = as_loaded(reference_of(target, reference))
        reference_engine = ScoringEngine(reference, max_length=window["max_length"], **batching)
        if _same_model(reference, target):
            not_applicable = (f"the reference model is the target itself ({reference.ref}: same weights and "
                              "tokenizer), so the score carries no membership signal")
    shadow_scorer = None
    if shadows is not None:
        base = reference if reference_engine is not None and reference.ref == target.base_ref else None
        trained = train_shadows(_shadow_base(target, base), population, recipe, k=shadows.k, seed=shadows.seed,
                                progress=progress)
        shadow_scorer = ShadowScorer(trained, target_engine)
        record = run_record(target)
        size = trained.size_note(record.n_examples if record else None)
        warnings += [size] if size else []

    origin = np.array([i for i, _ in pool_mem + pool_non])
    texts = [t for _, t in pool_mem + pool_non]
    labels = np.array([1] * len(pool_mem) + [0] * len(pool_non))
    if "same_tokens" in needs and reference_engine is not None:
        _check_same_tokens([n for n, a in instances.items() if "same_tokens" in a.needs], target_engine,
                           reference_engine, texts)
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
                        nonmember_shots=non_shots, member_shots=mem_shots, corpus=corpus, shadows=shadow_scorer,
                        seed=seed, progress=progress)
    results: dict[str, AttackResult] = {}
    timing, passes = {}, {}
    # The shadows count their passes as an engine does (ShadowScorer): the cost tables take them as one more model.
    engines = {"target": target_engine, **({"reference": reference_engine} if reference_engine else {}),
               **({"shadows": shadow_scorer} if shadow_scorer else {})}
    for name, attack in instances.items():
        t0 = time.perf_counter()
        before = {k: e.forward_passes for k, e in engines.items()}
        out = attack.run(ctx)
        timing[name] = round(time.perf_counter() - t0, 3)
        # The passes this attack added (the target's shared pass ran before every attack; later attacks reuse what
        # earlier ones scored, so the suite's order decides who pays).
        passes[name] = {k: e.forward_passes - before[k] for k, e in engines.items()}
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
        results[name] = AttackResult(
            scores=out.scores, raw=out.raw, raw_name=out.raw_name, labels=labels, params=attack.params.to_dict(),
            metrics=evaluate(labels, out.scores, n_boot=n_boot, seed=seed), summary=attack.summary, note=out.note,
            cost=out.extra.get("cost"),  # an attack's own cost breakdown (SPV-MIA's stages)
            not_applicable=not_applicable if "reference" in attack.needs else None)
    if not results:
        raise TuneguardError(f"no attack could be evaluated: {'; '.join(warnings)}")
    if n_truncated:
        warnings.append(f"{n_truncated} texts were longer than {target_engine.max_length} tokens and were truncated")
    if window["training_max_length"] and target_engine.max_length > window["training_max_length"]:
        warnings.append(f"the scoring window ({target_engine.max_length} tokens) exceeds the target's training window "
                        f"({window['training_max_length']} tokens, from its run record): tokens past it were never "
                        "trained on and dilute the membership signal")
    if reference_engine and reference.tokenizer.get_vocab() != target.tokenizer.get_vocab():
        warnings.append(f"the reference {reference.ref} has another tokenizer than the target: each model scores "
                        "with its own, so reference-based scores compare per-token means over different tokens")
    if non_shots or mem_shots:
        warnings.append(f"{len(non_shots)} non-member and {len(mem_shots)} member texts were used as ReCall shots and "
                        "are not evaluated")
    # Named only when used: a score read from the cache may differ from a fresh-cache run's by float rounding.
    score_cache = {k: e.cache_use() for k, e in engines.items() if e.cache_reads}
    drawn = {need for need, shots in (("nonmember_shots", non_shots), ("member_shots", mem_shots)) if shots}
    read = _read_not_recorded(target, window, shadows)
    shadow_settings = None
    if shadow_scorer is not None:
        shadow_settings = {**shadow_scorer.shadows.summary(), "population": shadows.file,
                           "attacks": [n for n in results if "shadows" in instances[n].needs]}
    return MIAResult(
        title=title or f"Membership inference against {target.ref}",
        settings={"target": target.ref, **({"base": target.base_ref} if target.base_ref else {}),
                  "reference": reference_engine.name if reference_engine else None,
                  "attacks": names, "params": {n: a.params.to_dict() for n, a in instances.items()}, "seed": seed,
                  "members": len(split.members), "nonmembers": len(split.nonmembers), "evaluated": len(texts),
                  **window, "n_shots": n_shots, "bootstrap": n_boot, **target.placement(),
                  **({"score_cache": score_cache} if score_cache else {}),
                  **({"left_out": suite.left_out} if suite.left_out else {}),
                  **({"read_not_recorded": read} if read else {}),
                  **({"shadows": shadow_settings} if shadow_settings else {})},
        attacks=results, skipped=skipped, warnings=warnings, shots={"nonmember": non_shots, "member": mem_shots},
        cost={"seconds": timing, "forward_passes": {k: e.forward_passes for k, e in engines.items()},
              "forward_passes_by_attack": passes, "model_calls": {k: e.batches for k, e in engines.items()},
              **not_run_cost(instances, len(texts), n_shots, drawn),
              **({"shadows": shadow_scorer.cost()} if shadow_scorer else {})},
        origin=origin.tolist())


def not_run_cost(ran: dict[str, Attack], n_texts: int, n_shots: int, drawn: set[str]) -> dict[str, Any]:
    """For a run of the attacks ``ran`` that evaluated ``n_texts`` texts: what each attack of ``all`` it did not run
    would add beside the passes it made (``not_run``: forward passes per model, and which passes), and what
    ``--attacks all`` would spend in all (``all_would_spend``, per model), from each attack's declared
    :meth:`Attack.passes`. ReCall shots the run did not draw (``drawn``: the ``needs`` it met) would leave the
    evaluation: ``n_shots`` fewer texts per class drawn from."""
    made = {TARGET_TEXTS}.union(*(a.passes(1) for a in ran.values()))
    suite = {n: ran[n] if n in ran else ATTACKS.make(n) for n in ALL_ATTACKS}

    def passes(attacks: list[Attack]) -> dict[Pass, int]:
        draws = {need for a in attacks for need in a.needs & {"nonmember_shots", "member_shots"}} - drawn
        n = max(n_texts - n_shots * len(draws), 0)
        return {p: k for a in attacks for p, k in a.passes(n).items()}

    not_run = {}
    for name, attack in suite.items():
        if name not in ran and not any(_same_computation(attack, other) for other in ran.values()):
            extra = {p: k for p, k in passes([attack]).items() if p not in made}
            not_run[name] = {"forward_passes": _per_model(extra),
                             "passes": [{"model": p.model, "what": p.what, "forward_passes": k}
                                        for p, k in extra.items()]}
    return {"not_run": not_run, "all_would_spend": _per_model(passes(list(suite.values())))}


def _same_computation(a: Attack, b: Attack) -> bool:
    """Whether two attacks compute the same scores: one implementation with the same parameters (``fast``'s
    ``ensemble`` with features=extended is ``all``'s ``ensemble-extended``)."""
    return type(a).run is type(b).run and a.params.to_dict() == b.params.to_dict()


def _per_model(passes: dict[Pass, int]) -> dict[str, int]:
    """Forward passes summed per model."""
    totals: dict[str, int] = {}
    for p, k in passes.items():
        totals[p.model] = totals.get(p.model, 0) + k
    return totals


def _scoring_window(target: LoadedModel, max_length: int | None) -> dict[str, Any]:
    """The tokens scored per text and where that number comes from: ``max_length`` when given, else the window
    the target was trained on (its run record), else the model's context."""
    training = training_window(target)
    if max_length is not None:
        source = "given"
    elif training is not None:
        max_length, source = training, "training run record"
    else:
        max_length, source = target.max_length, "model context"
    return {"max_length": max_length, "max_length_source": source, "training_max_length": training}


def _plain_adapter(target: LoadedModel | str | Path) -> bool:
    """Whether ``target`` is a PEFT adapter without a tuneguard run record beside it (trained elsewhere)."""
    where = target.meta.get("adapter") if isinstance(target, LoadedModel) else Path(target).expanduser()
    return bool(where) and (Path(where) / "adapter_config.json").is_file() and record_path(target) is None


def _name(target: LoadedModel | str | Path) -> str:
    return target.ref if isinstance(target, LoadedModel) else str(target)


def _read_not_recorded(target: LoadedModel, window: dict[str, Any], shadows: ShadowSpec | None) -> dict[str, str]:
    """For a target without a run record that was fine-tuned (a PEFT adapter trained elsewhere): what the run took
    from elsewhere than a record of its training, each with where it came from; empty for any other target."""
    if not _plain_adapter(target):
        return {}
    read = {"base": f"{target.base_ref}, from the adapter's adapter_config.json (base_model_name_or_path)",
            "window": f"{window['max_length']} tokens per text, given (the training window is not recorded)",
            "dtype": f"{target.placement()['dtype']}, the precision it was loaded in (the training precision is not "
                     "recorded)"}
    if shadows is not None:
        read["recipe"] = "the shadows' fine-tuning recipe, given (the target's is not recorded)"
    return read


def _shadow_base(target: LoadedModel, loaded: LoadedModel | None) -> LoadedModel:
    """The base model the shadows fine-tune: the target's (``loaded`` when the run loaded it already), refused when
    the target names none or when its weights are not those the target's run record was fine-tuned from."""
    if not target.base_ref:
        raise TuneguardError(f"shadow models fine-tune the base model {target.ref} was fine-tuned from, and it names "
                             "none (no run record or adapter config): audit a tuneguard fine-tune or a PEFT adapter")
    base = loaded or as_loaded(target.base_ref)
    record = run_record(target)
    if record and record.base_fingerprint and record.base_fingerprint != base.fingerprint:
        raise TuneguardError(f"the base model {base.ref} loaded now has other weights than the one {target.ref} was "
                             "fine-tuned from (its run record's fingerprint): shadows of it would not repeat the "
                             "target's training")
    return base


def _check_same_tokens(names: list[str], target: ScoringEngine, reference: ScoringEngine, texts: list[str]) -> None:
    """Refuse, before any forward pass, a reference that would score other token ids than the target for a text
    (the attacks ``names`` compare the two token by token)."""
    def scored_ids(engine: ScoringEngine, text: str) -> list[int]:
        ids, first, _ = engine.encode(text)
        return ids[first:]

    bad = [i for i, text in enumerate(texts) if scored_ids(target, text) != scored_ids(reference, text)]
    if bad:
        raise TuneguardError(f"{', '.join(names)} compare target and reference token by token, but the reference "
                             f"{reference.name} tokenises {len(bad)} of {len(texts)} texts differently from the "
                             f"target: pass a --reference with the target's tokenizer, or leave {', '.join(names)} "
                             "out of --attacks")


def _same_model(a: LoadedModel, b: LoadedModel) -> bool:
    """Whether two loaded models score identically: the same weights (fingerprint) and the same tokenizer."""
    if a is b:
        return True
    return a.fingerprint == b.fingerprint and a.tokenizer.get_vocab() == b.tokenizer.get_vocab()


def _check_attacker_data(instances: dict[str, Attack], corpus: list[str] | None, corpus_name: str,
                         split: Split) -> list[str]:
    """Refuse attacker data (the run's corpus, a prompt pool, reference data) holding an evaluated text; return
    the warnings about near duplicates."""
    sources = [(f"the {name} corpus{corpus_name}", corpus) for name, a in instances.items()
               if "corpus" in a.needs and corpus]
    for attack in instances.values():
        sources += attack.attacker_texts()
    found = [check_attacker_data(source, texts, split.members, split.nonmembers) for source, texts in sources]
    return [w for w in found if w]


def max_shots(count: int) -> int:
    """The most ReCall shots ``count`` texts of one class can give: the shots leave the evaluation, 2 must remain."""
    return count - 2


def _draw(rng: random.Random, pool: list, n: int) -> list:
    """Remove and return ``n`` random items of ``pool`` (in place)."""
    if n > max_shots(len(pool)):
        raise TuneguardError(f"cannot take {n} ReCall shots from {len(pool)} texts and keep 2 to evaluate: "
                             "lower --shots or add texts")
    picked = sorted(rng.sample(range(len(pool)), n), reverse=True)
    return [pool.pop(i) for i in picked][::-1]


def _check_class_sizes(n_members: int, n_nonmembers: int, when: str) -> None:
    if n_members < 2 or n_nonmembers < 2:
        raise TuneguardError(f"membership inference needs at least 2 members and 2 non-members ({when}: "
                             f"{n_members} members, {n_nonmembers} non-members)")
