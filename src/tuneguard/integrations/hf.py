"""Watch the membership leak while a Hugging Face ``Trainer`` (or TRL's ``SFTTrainer``) trains: :class:`LeakCallback`.

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=heldout, processing_class=tokenizer)
    trainer.add_callback(LeakCallback(trainer=trainer, members=train_texts, nonmembers=heldout_texts,
                                      budget="tpr@10%<=0.2", out="runs/leak"))
    trainer.train()
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from transformers import ProcessorMixin, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from tuneguard.errors import TuneguardError
from tuneguard.integrations.leak import DEFAULT_ATTACKS, LeakMonitor

if TYPE_CHECKING:
    import torch
    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

    from tuneguard.models import LoadedModel
    from tuneguard.privacy_target import Target

log = logging.getLogger(__name__)


class LeakCallback(TrainerCallback):
    """A ``TrainerCallback`` measuring the membership leak of the model being trained, at each evaluation
    (``every=None``) or every ``every`` optimizer steps (:class:`tuneguard.integrations.leak.LeakMonitor` does the
    measuring; its docstring has the details).

    What a check does: ``sample`` of the training ``members`` and as many held-out ``nonmembers`` (drawn once with
    ``seed``, so the points are comparable) are attacked with ``attacks`` (default loss, Min-K%++, ratio, EZ-MIA,
    WBC), target = the model being trained, reference = its base: for a PEFT model the same model with the adapter
    disabled, for full fine-tuning the given ``reference`` or, by default, the model itself as it was at the start of
    training. No second copy of the weights is loaded or kept.

    Cost: ``2 × n`` forward passes per check (n = the sample size, members and non-members under the trained model),
    plus ``2 × n`` once at the start of training under the reference, whose weights do not change.

    What it reports: ``leak/auc_<attack>``, ``leak/tpr@10%_<attack>``, ``leak/strongest_auc`` and
    ``leak/strongest_attack`` go through ``trainer.log``, so TensorBoard, W&B and the console show them at the step
    of the evaluation beside the eval loss; this needs ``trainer=`` (a callback is not given the trainer). Without it
    they go to ``state.log_history`` only, and a warning says so. ``out``: ``leak.json`` (the leak-vs-step curve,
    rewritten after each check) and ``leak.png``.

    ``budget`` (``"tpr@10%<=0.2"``, ``"auc<=0.6"``): at the first check where the strongest attack goes beyond it,
    training stops (``control.should_training_stop``) and ``leak.json`` names the last checkpoint the trainer saved
    at or before the last check within the budget (``budget.checkpoint_within``; also :attr:`checkpoint_within`).

    Several processes: every process runs each check (the forward passes shared out, every score on every process),
    rather than the main one alone while the others wait at a barrier: a check takes 1/N of the time, and every
    process reaches the same stop decision without it being broadcast. Only world process zero logs and writes.
    ``max_length``: tokens scored per text; give the training window (default: the model's context).
    """

    def __init__(self, *, members: Sequence[str], nonmembers: Sequence[str], every: int | None = None,
                 sample: int = 128, budget: str | Target | None = None,
                 reference: LoadedModel | str | torch.nn.Module | None = None,
                 attacks: str | Sequence[str] = DEFAULT_ATTACKS, out: str | Path | None = None, seed: int = 0,
                 max_length: int | None = None, batch_size: int = 8, trainer: Trainer | None = None,
                 tokenizer: Any = None) -> None:
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise TuneguardError(f"LeakCallback: every must be a whole number of steps >= 1 (or None: at each "
                                 f"evaluation), got {every!r}")
        self.monitor = LeakMonitor(members, nonmembers, sample=sample, budget=budget, reference=reference,
                                   attacks=attacks, out=out, seed=seed, max_length=max_length, batch_size=batch_size)
        self.every = every
        self.trainer = trainer
        self.tokenizer = tokenizer

    @property
    def points(self) -> list[dict[str, Any]]:
        """The curve so far: one point per check (see ``leak.json``)."""
        return self.monitor.points

    @property
    def checkpoint_within(self) -> Path | None:
        """The last checkpoint saved within the budget (None without a budget, or when none was saved)."""
        return self.monitor.checkpoint_within()

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: torch.nn.Module | None = None, processing_class: Any = None, **kwargs) -> None:
        self.monitor.main = state.is_world_process_zero
        tokenizer = self.tokenizer or processing_class
        if isinstance(tokenizer, ProcessorMixin):
            tokenizer = tokenizer.tokenizer
        if tokenizer is None:
            raise TuneguardError("LeakCallback needs the model's tokenizer: give the Trainer processing_class= or "
                                 "the callback tokenizer=")
        if state.is_world_process_zero:
            if self.every is None and args.eval_strategy == "no":
                log.warning("LeakCallback checks at each evaluation and this Trainer never evaluates: set "
                            "eval_strategy (and an eval_dataset) or pass every=N steps")
            if self.trainer is None:
                log.warning("LeakCallback was given no trainer=: its leak/ figures go to state.log_history and "
                            "leak.json only, not to TensorBoard, W&B or the console")
        if state.global_step:  # resumed: the trainer's checkpoints so far may be the ones within the budget
            for path in Path(args.output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
                step = path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
                if step.isdigit() and int(step) <= state.global_step:
                    self.monitor.checkpoints[int(step)] = path
        self.monitor.start(model, tokenizer, step=state.global_step)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: torch.nn.Module | None = None, **kwargs) -> None:
        if self.every is not None and state.global_step % self.every == 0:
            self._check(state, control, model)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: torch.nn.Module | None = None, **kwargs) -> None:
        if self.every is None:
            self._check(state, control, model)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        # The path Trainer._save_checkpoint writes (hyper-parameter search runs save elsewhere: not named then).
        path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        self.monitor.checkpoints[state.global_step] = path

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if not state.is_world_process_zero:
            return
        self.monitor.write()  # again: the checkpoints saved after the last check are known now
        if self.monitor.exceeded:
            within = self.monitor.checkpoint_within()
            log.warning("training stopped at the leak budget %s; the last checkpoint within it: %s",
                        self.monitor.budget.text, within or "none saved")

    def _check(self, state: TrainerState, control: TrainerControl, model: torch.nn.Module) -> None:
        # Not before training (trainer.evaluate() called alone: no base scored yet), and once per step (an evaluation
        # called by hand after training can follow the last one).
        if not self.monitor.started or any(p["step"] == state.global_step for p in self.monitor.points):
            return
        point = self.monitor.check(model, step=state.global_step, epoch=state.epoch)
        if state.is_world_process_zero:
            self._log(state, control, self.monitor.logs(point))
        if self.monitor.exceeded:
            control.should_training_stop = True

    def _log(self, state: TrainerState, control: TrainerControl, logs: dict[str, float | str]) -> None:
        if self.trainer is None:  # the entry Trainer.log would append
            state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})
            return
        # Trainer.log ends with on_log, which clears should_log: a loss log due at this step must still happen.
        due = control.should_log
        self.trainer.log(dict(logs))
        control.should_log = due
