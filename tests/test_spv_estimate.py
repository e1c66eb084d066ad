"""SPV-MIA's self-prompt stage warns, from its first batches, when it will take long, and says how to shrink it."""

from __future__ import annotations

import logging

from tuneguard.attacks import ATTACKS
from tuneguard.attacks.spv import selfprompt
from tuneguard.attacks.spv.selfprompt import long_stage_note, self_prompt_texts
from tuneguard.models import tiny_model

POOL = [f"In a trial of {80 + i} adults the dose changed blood pressure by {i} percent over weeks" for i in range(8)]


def test_the_estimate_comes_after_the_first_batches_with_the_parameter_to_shrink_it(tmp_path, caplog,
                                                                                       monkeypatch):
    monkeypatch.setattr(selfprompt, "LONG_STAGE_SECONDS", 0.0)  # every stage counts as long
    kw = dict(n_texts=8, prompt_tokens=4, total_tokens=10, batch_size=2, seed=0, progress=False)
    with caplog.at_level(logging.WARNING, logger=selfprompt.__name__):
        texts = self_prompt_texts(tiny_model("gpt2"), POOL, directory=tmp_path, **kw)
    assert len(texts) == 8
    [warning] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("SPV-MIA self-prompt")]
    # Two batches of 2 timed: 4 of the 8 texts are still to come when it is printed.
    assert "for the 4 texts left of n_texts = 8" in warning and "--param spv-mia.n_texts=" in warning


def test_a_short_stage_prints_nothing(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=selfprompt.__name__):
        self_prompt_texts(tiny_model("gpt2"), POOL, n_texts=4, prompt_tokens=4, total_tokens=8, batch_size=1,
                          directory=tmp_path, progress=False)
    assert not caplog.records


def test_the_note_names_the_time_and_a_smaller_real_parameter():
    note = long_stage_note(1.02, 9_968, 10_000, 16)  # the paper's M at about a second per text on a CPU
    assert "about 2 h 49 min more for the 9,968 texts left of n_texts = 10,000" in note
    assert "--param spv-mia.n_texts=576 (about 10 min of generation here" in note  # 576 = 36 batches of 16
    assert "n_texts" in {info.name for info in ATTACKS.get("spv-mia").Params.describe()}
    assert "n_texts=160 (about 80 s" in long_stage_note(0.5, 300, 332, 16)  # at most half, in whole batches
    assert long_stage_note(0.01, 300, 332, 16) is None
