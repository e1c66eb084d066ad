"""DP-SGD baseline: differentially private LoRA fine-tuning with Opacus (per-sample clipping + Gaussian noise).

Batches are drawn by Poisson sampling (each example joins a step with probability q = batch_size / n), which is
what the RDP accountant's guarantee assumes; an empty draw still takes a noise-only step. The noise multiplier is
chosen for ``target_epsilon`` at ``delta`` over the planned steps, and the epsilon actually spent is recorded.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tuneguard.errors import TuneguardError
from tuneguard.models import LoadedModel, load_model
from tuneguard.seed import set_seed
from tuneguard.train import TrainConfig, TrainResult
from tuneguard.train.batching import IGNORE, collate, encode_examples, examples_digest
from tuneguard.train.loop import finished_record, save_trained
from tuneguard.train.methods import prepare_model


@dataclass
class DPConfig:
    """Privacy budget: ``target_epsilon`` (``inf`` = clipping only, no noise) at ``delta`` (default 1/(10·n))."""

    target_epsilon: float = 8.0
    delta: float | None = None
    max_grad_norm: float = 1.0


def dp_finetune(model: LoadedModel | str, texts: list[str], out_dir: str | Path, config: TrainConfig | None = None,
                dp: DPConfig | None = None, *, progress: bool = True) -> TrainResult:
    """Fine-tune LoRA parameters with DP-SGD and save the adapter with a run record holding the epsilon spent.

    A finished identical run in ``out_dir`` is loaded instead of retrained (the run itself is not checkpointed:
    its privacy accounting would have to be resumed too).
    """
    try:
        from opacus import GradSampleModule
        from opacus.accountants import RDPAccountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.optimizers import DPOptimizer
    except ImportError:
        raise TuneguardError("DP-SGD needs Opacus: pip install 'tuneguard[dp]' (or pip install opacus)") from None
    config = config or TrainConfig()
    dp = dp or DPConfig()
    if config.method != "lora":
        raise TuneguardError(f"DP-SGD is offered for LoRA only (Opacus has no per-sample gradients for "
                             f"{config.method} layers)")
    base = load_model(model) if isinstance(model, str) else model
    out_dir = Path(out_dir)
    n = len(texts)
    delta = dp.delta if dp.delta is not None else 1.0 / (10 * n)
    q = min(1.0, config.batch_size / n)
    steps = config.max_steps or config.epochs * math.ceil(n / config.batch_size)
    # The DP settings are part of what must match for a finished run to be reused.
    digest_config = TrainConfig(**{**config.to_dict(), "extra": {**config.extra, "dp": asdict(dp)}})
    done = finished_record(out_dir, digest_config, examples_digest(texts))
    if done is not None:
        return TrainResult(load_model(out_dir, base=base.ref), out_dir, done)
    sigma = 0.0 if math.isinf(dp.target_epsilon) else get_noise_multiplier(
        target_epsilon=dp.target_epsilon, target_delta=delta, sample_rate=q, steps=steps, accountant="rdp")

    set_seed(config.seed)
    net = prepare_model(copy.deepcopy(base.model), config)
    encoded = encode_examples(texts, base.tokenizer, config.max_length)
    trainable = [p for p in net.parameters() if p.requires_grad]
    gsm = GradSampleModule(net, loss_reduction="mean")
    optimizer = DPOptimizer(torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay),
                            noise_multiplier=sigma, max_grad_norm=dp.max_grad_norm,
                            expected_batch_size=config.batch_size, loss_reduction="mean")
    accountant = RDPAccountant()
    sampler = torch.Generator().manual_seed(config.seed)
    gsm.train()
    curve, tokens, t0 = [], 0, time.perf_counter()
    for _ in tqdm(range(steps), desc="dp-sgd", unit="step", disable=not progress):
        chosen = torch.nonzero(torch.rand(n, generator=sampler) < q).flatten().tolist()
        if chosen:
            batch = collate([encoded[i] for i in chosen], base.tokenizer.pad_token_id)
            tokens += int(batch["attention_mask"].sum())
            loss = _per_example_mean_loss(gsm, batch)
            loss.backward()
            curve.append(round(loss.item(), 6))
        else:  # an empty Poisson draw still takes a noise-only step; skipping it would reveal the draw
            for p in trainable:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
        optimizer.step()
        optimizer.zero_grad()
        accountant.step(noise_multiplier=sigma, sample_rate=q)
    seconds = time.perf_counter() - t0
    trained = gsm._module
    trained.eval()
    record = {
        "status": "done", "base_ref": base.ref, "method": "lora+dp-sgd", "config": config.to_dict(),
        "config_digest": digest_config.digest(), "data_digest": examples_digest(texts), "n_examples": n,
        "dp": {**asdict(dp), "delta": delta, "noise_multiplier": sigma, "sample_rate": q, "steps": steps,
               "epsilon_spent": math.inf if sigma == 0 else accountant.get_epsilon(delta), "accountant": "rdp"},
        "steps": steps, "loss_curve": curve, "train_seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / max(seconds, 1e-9), 2),
    }
    save_trained(trained, base, out_dir, record)
    return TrainResult(LoadedModel(trained, base.tokenizer, ref=str(out_dir), base_ref=base.ref,
                                   meta={**base.meta, "adapter": str(out_dir)}), out_dir, record)


def _per_example_mean_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over examples of each example's mean token loss, so each example's gradient is its own."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE,
                                                   reduction="none")
    return (token_loss.sum(1) / (labels != IGNORE).sum(1).clamp(min=1)).mean()
