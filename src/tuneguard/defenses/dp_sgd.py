"""DP-SGD baseline: differentially private LoRA fine-tuning with Opacus (per-sample clipping + Gaussian noise).

Batches are drawn by Poisson sampling (each example joins a step with probability q = batch_size · grad_accum / n),
which is what the RDP accountant's guarantee assumes; an empty draw still takes a noise-only step. A drawn batch is
processed in physical batches of ``batch_size`` whose clipped per-sample gradients are summed before the one noisy
step, so gradient accumulation, the number of optimizer steps and the learning-rate schedule (scheduler, warm-up)
are those of the non-private run with the same TrainConfig. The noise multiplier is chosen for ``target_epsilon`` at
``delta`` over the planned steps, and the epsilon actually spent is recorded, with ``noise_std``: the standard
deviation of the noise on each step's mean gradient, σ·max_grad_norm / expected batch (the figure to hold against
the clipped gradient's norm, at most max_grad_norm). The TrainConfig is used as given; the experiment's DP regime
(``tuneguard.regimes.dp``) scales the learning rate and the batch of the run it is compared with for DP.

The noisy gradient is the sum of the clipped per-sample gradients plus the noise, divided by the *expected* batch
(q·n), never by the number of texts the Poisson draw happened to give (Opacus issue #819 is about this
normalisation): the accountant analyses the noisy sum, and dividing it by a constant is post-processing, while
dividing by the drawn count would make each step depend on the draw's size. A small draw takes a smaller step.
``tests/test_dp_learns.py`` pins it. The users' most reported DP failure, an Opacus + PEFT run whose weights never
change, is caught after the first step that should have moved them (:func:`check_moved`), before any time is spent.

``tuneguard audit-dp`` alone passes an :class:`AuditPlan`: the n the sampling rate, steps and default delta are
planned for (fixed before the canaries' inclusion is drawn, so neighbouring inclusion vectors run one mechanism),
and, to show that the audit has power, a planted bug that breaks the guarantee while the accountant still claims it.
A planted run's record says so (``dp.audit_plan``, method ``lora+dp-sgd+planted-bug``); `defend dp` and the
experiment's DP regime have no way to set one.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneguard.errors import TuneguardError
from tuneguard.models.record import RunRecord
from tuneguard.params import Params, param
from tuneguard.train import TrainConfig

if TYPE_CHECKING:  # the settings and the method check (experiment files, `defend dp`'s options) load no torch
    import torch

    from tuneguard.models import LoadedModel
    from tuneguard.train import TrainResult


@dataclass
class DPConfig(Params):
    """The privacy budget and the clipping bound."""

    target_epsilon: float = param(8.0, "target epsilon (inf = clipping only, no noise)", gt=0)
    delta: float | None = param(None, "target delta (default 1/(10·n), n = training texts)", gt=0, lt=1)
    max_grad_norm: float = param(1.0, "per-sample gradient clipping bound", gt=0)


def dp_setting(name: str) -> Any:
    """DPConfig's declaration of its field ``name`` (default, help, bounds) for another ``Params`` class that takes
    the same setting, maybe under another name (the DP regime's ``epsilon``, audit-dp's ``max_grad_norm``): one
    source for every DP setting. The field remembers which DPConfig field it is (:func:`dp_config_of`)."""
    declared = next(f for f in dataclasses.fields(DPConfig) if f.name == name)
    return dataclasses.field(default=declared.default, metadata={**declared.metadata, "dp_config": name})


def dp_config_of(params: Params) -> DPConfig:
    """The DPConfig set by ``params``' fields declared with :func:`dp_setting` (every DPConfig field must be one)."""
    values = {f.metadata["dp_config"]: getattr(params, f.name) for f in dataclasses.fields(params)
              if "dp_config" in f.metadata}
    missing = [f.name for f in dataclasses.fields(DPConfig) if f.name not in values]
    if missing:  # a DPConfig setting the options cannot set would silently keep its default
        raise TypeError(f"{type(params).__name__} declares no field for DPConfig's {', '.join(missing)}")
    return DPConfig(**values)


# The bugs audit-dp can plant (the accountant goes on claiming the honest run's epsilon).
BUGS = ("noise=F (the noise scaled by F, 0 <= F < 1) or normalise=sampled (the gradient sum divided by the drawn "
        "batch size, not the expected one: Opacus #819)")


@dataclass(frozen=True)
class AuditPlan:
    """What ``tuneguard audit-dp`` fixes in a DP-SGD run, or plants into it; nothing else sets it.

    ``population``: the n that the sampling rate q = B/n, the optimizer steps and the default delta are planned for,
    in place of the number of examples given. ``bug``: None or a planted bug, :data:`BUGS`.
    """

    population: int | None = None
    bug: str | None = None

    def __post_init__(self) -> None:
        if self.population is not None and self.population < 1:
            raise TuneguardError(f"an audit plan needs a population of at least 1 example, got {self.population}")
        if self.bug is not None:
            parse_bug(self.bug)

    @property
    def noise_factor(self) -> float:
        """What the noise is scaled by (1 without a noise bug)."""
        kind, value = parse_bug(self.bug) if self.bug else (None, None)
        return value if kind == "noise" else 1.0

    @property
    def sampled_normaliser(self) -> bool:
        """Whether the gradient sum is divided by the drawn batch size (the normalise bug)."""
        return bool(self.bug) and parse_bug(self.bug)[0] == "normalise"

    def to_dict(self) -> dict:
        """Plain-JSON form (the run record, the run's digest)."""
        return {"population": self.population, "planted_bug": self.bug}


def parse_bug(spec: str) -> tuple[str, float | str]:
    """``noise=F`` -> ("noise", F); ``normalise=sampled`` -> ("normalise", "sampled"); anything else is refused."""
    kind, _, value = spec.partition("=")
    kind, value = kind.strip(), value.strip()
    if kind == "normalise" and value == "sampled":
        return kind, value
    if kind == "noise":
        try:
            factor = float(value)
        except ValueError:
            factor = math.nan
        if 0 <= factor < 1:
            return kind, factor
    raise TuneguardError(f"planted bug {spec!r} must read {BUGS}, e.g. noise=0.1")


def check_method(config: TrainConfig) -> None:
    """DP-SGD needs per-sample gradients, which Opacus has for LoRA layers only."""
    if config.method != "lora":
        raise TuneguardError(f"DP-SGD is offered for LoRA only (Opacus has no per-sample gradients for "
                             f"{config.method} layers): use --method lora / method = \"lora\"")


def dp_finetune(model: LoadedModel | str, texts: list[str], out_dir: str | Path, config: TrainConfig | None = None,
                dp: DPConfig | None = None, *, progress: bool = True, plan: AuditPlan | None = None) -> TrainResult:
    """Fine-tune LoRA parameters with DP-SGD and save the adapter with a run record holding the epsilon spent.

    A finished identical run in ``out_dir`` (same settings, data and base model) is loaded instead of retrained (the
    run itself is not checkpointed: its privacy accounting would have to be resumed too). ``plan``: audit-dp's only
    (see the module docstring).
    """
    import torch
    from tqdm.auto import tqdm

    from tuneguard.models import LoadedModel, as_loaded, load_model
    from tuneguard.seed import set_seed
    from tuneguard.train import TrainResult
    from tuneguard.train.batching import collate, encode_examples, examples_digest
    from tuneguard.train.loop import finished_record, make_scheduler, optimizer_steps, predictable, save_trained
    from tuneguard.train.methods import check_extra, prepare_model

    try:
        from opacus import GradSampleModule
        from opacus.accountants import RDPAccountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.optimizers import DPOptimizer
    except ImportError:
        raise TuneguardError("DP-SGD needs Opacus: pip install 'tuneguard[dp]' (or pip install opacus)") from None
    config = config or TrainConfig()
    dp = dp or DPConfig()
    check_method(config)
    check_extra(config)
    base = as_loaded(model)
    out_dir = Path(out_dir)
    # Examples with no token to predict are left out before anything depends on n (the Poisson sampling rate and
    # the accountant see only the examples that can be sampled); a one-token example's mean loss would be 0/0.
    encoded = predictable(encode_examples(texts, base.tokenizer, config.max_length))
    n = len(encoded)
    planned = plan.population if plan is not None and plan.population is not None else n
    delta = dp.delta if dp.delta is not None else 1.0 / (10 * planned)
    logical = config.batch_size * config.grad_accum  # expected examples per optimizer step
    q = min(1.0, logical / planned)
    steps = optimizer_steps(planned, config)
    # The DP settings are part of what must match for a finished run to be reused (a plan only when there is one,
    # so a run without one keeps its digest).
    planned_extra = {"audit_plan": plan.to_dict()} if plan is not None else {}
    digest_config = config.replace(extra={**config.extra, "dp": dp.to_dict(), **planned_extra})
    data_digest = examples_digest(texts)
    done = finished_record(out_dir, digest_config, data_digest, base)
    if done is not None:
        return TrainResult(load_model(out_dir, base=base.ref), out_dir, done)
    sigma = 0.0 if math.isinf(dp.target_epsilon) else get_noise_multiplier(
        target_epsilon=dp.target_epsilon, target_delta=delta, sample_rate=q, steps=steps, accountant="rdp")

    set_seed(config.seed)
    net = prepare_model(copy.deepcopy(base.model), config)
    trainable = [p for p in net.parameters() if p.requires_grad]
    gsm = GradSampleModule(net, loss_reduction="mean")
    inner = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(inner, config, steps)
    # A planted noise bug scales the noise the optimizer adds; the accountant below still charges sigma.
    noise_used = sigma * (plan.noise_factor if plan is not None else 1.0)
    optimizer = DPOptimizer(inner, noise_multiplier=noise_used, max_grad_norm=dp.max_grad_norm,
                            expected_batch_size=logical, loss_reduction="mean")
    accountant = RDPAccountant()
    sampler = torch.Generator().manual_seed(config.seed)
    gsm.train()
    # The trainable weights before training, kept until the first step that must move them has been checked.
    before: list[torch.Tensor] | None = [p.detach().clone() for p in trainable]
    curve, lr_curve, tokens, padded, t0, c0 = [], [], 0, 0, time.perf_counter(), time.process_time()
    for _ in tqdm(range(steps), desc="dp-sgd", unit="step", disable=not progress):
        chosen = torch.nonzero(torch.rand(n, generator=sampler) < q).flatten().tolist()
        physical = [chosen[k:k + config.batch_size] for k in range(0, len(chosen), config.batch_size)] or [[]]
        if plan is not None and plan.sampled_normaliser:  # the planted normalise bug: divide by the drawn count
            optimizer.expected_batch_size = max(1, len(chosen))
        losses = []
        for k, part in enumerate(physical):
            if part:
                batch = collate([encoded[i] for i in part], base.tokenizer.pad_token_id)
                tokens += int(batch["attention_mask"].sum())
                padded += int(batch["attention_mask"].numel())
                batch = {key: v.to(base.device) for key, v in batch.items()}
                loss = _per_example_mean_loss(gsm, batch)
                loss.backward()
                losses.append((loss.item(), len(part)))
            else:  # an empty Poisson draw still takes a noise-only step; skipping it would reveal the draw
                for p in trainable:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            # Every physical batch but the last only clips and sums its per-sample gradients (Opacus' virtual step).
            last = k == len(physical) - 1
            optimizer.signal_skip_step(do_skip=not last)
            optimizer.step()
            lr = inner.param_groups[0]["lr"]
            # A step moves the weights when its learning rate is positive (a warm-up starts at 0) and it carries a
            # gradient or noise (an empty draw without noise adds nothing).
            if last and before is not None and lr > 0 and (losses or noise_used > 0):
                check_moved(trainable, before, lr)
                before = None
            optimizer.zero_grad()
        lr_curve.append(inner.param_groups[0]["lr"])
        scheduler.step()
        accountant.step(noise_multiplier=sigma, sample_rate=q)
        if losses:
            curve.append(round(sum(v * m for v, m in losses) / sum(m for _, m in losses), 6))
    seconds = time.perf_counter() - t0
    trained = gsm._module
    trained.eval()
    planted = plan is not None and plan.bug is not None
    record = RunRecord(
        base_ref=base.ref, base_fingerprint=base.fingerprint,
        method="lora+dp-sgd+planted-bug" if planted else "lora+dp-sgd", config=config.to_dict(),
        config_digest=digest_config.digest(), data_digest=data_digest, n_examples=n, epochs_done=config.epochs,
        steps=steps, loss_curve=curve, lr_curve=lr_curve, train_seconds=round(seconds, 3),
        cpu_seconds=round(time.process_time() - c0, 3), tokens=tokens,
        tokens_per_second=round(tokens / max(seconds, 1e-9), 2),
        padding_fraction=round(1 - tokens / max(padded, 1), 4),
        trainable_parameters=sum(p.numel() for p in trainable),
        dp={**dp.to_dict(), "delta": delta, "noise_multiplier": sigma, "sample_rate": q, "steps": steps,
            "expected_batch_size": logical, "noise_std": sigma * dp.max_grad_norm / logical,
            "epsilon_spent": math.inf if sigma == 0 else accountant.get_epsilon(delta), "accountant": "rdp",
            **({"audit_plan": {**plan.to_dict(), "noise_multiplier_used": noise_used}} if plan is not None else {})})
    save_trained(trained, base, out_dir, record)
    return TrainResult(LoadedModel(trained, base.tokenizer, ref=str(out_dir), base_ref=base.ref,
                                   meta={**base.meta, "adapter": str(out_dir)}), out_dir, record)


def check_moved(trainable: list[torch.nn.Parameter], before: list[torch.Tensor], lr: float) -> None:
    """Raise when an optimizer step that should have changed the trainable weights (``before``: their values ahead
    of it) changed none of them, naming the likely causes, rather than spend the run training nothing."""
    import torch

    if any(not torch.equal(p.detach(), b) for p, b in zip(trainable, before)):
        return
    grads = "no gradient reached them" if all(p.grad is None for p in trainable) else "they had gradients"
    dtype = str(trainable[0].dtype).removeprefix("torch.") if trainable else "unknown"
    raise TuneguardError(
        f"DP-SGD: the {len(trainable)} trainable LoRA tensors did not change in the first optimizer step (lr {lr:g}, "
        f"{dtype}; {grads}): raise --lr if it is too small to move {dtype} weights, check that Opacus wraps the peft "
        "model whose LoRA parameters require grad (and that the optimizer holds those parameters), and that the loss "
        "reaches them (every gradient None means it does not); nothing was saved")


def _per_example_mean_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over examples of each example's mean token loss, so each example's gradient is its own."""
    import torch

    from tuneguard.train.batching import IGNORE

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE,
                                                   reduction="none")
    return (token_loss.sum(1) / (labels != IGNORE).sum(1).clamp(min=1)).mean()
