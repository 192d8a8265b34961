"""Where a run's wall time goes: setup, training steps, evaluations, checkpoints.

A search pays for all four in every trial; only the training steps teach the model. StageTimer splits a
run's time by Trainer events, so a search (hpo) and a recipe's report can say where their time went.
"""

from __future__ import annotations

import time

from transformers import TrainerCallback

STAGES = ("setup", "training", "evaluation", "checkpoints")


class StageTimer(TrainerCallback):
    """Seconds per stage; the stages add up to the run's wall time.

    setup: from ``started`` to the first step (model loading, tokenizing, building the Trainer).
    training: the steps, with their data loading and logging.
    evaluation: each evaluation with everything its callbacks do (generation metrics, train-split metrics,
    a search's pruning decision): the timer must be the Trainer's last callback.
    checkpoints: saving checkpoints, loading the best one at the end, saving the kept model (``finish``).
    """

    def __init__(self, started: float) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._mark = started

    def _charge(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] += now - self._mark
        self._mark = now

    def on_train_begin(self, args, state, control, **kwargs):
        self._charge("setup")

    def on_step_end(self, args, state, control, **kwargs):
        self._charge("training")

    def on_evaluate(self, args, state, control, **kwargs):
        self._charge("evaluation")

    def on_save(self, args, state, control, **kwargs):
        self._charge("checkpoints")

    def finish(self) -> dict[str, float]:
        """After the kept model is saved: the rest goes to checkpoints; the seconds per stage."""
        self._charge("checkpoints")
        return {stage: round(seconds, 3) for stage, seconds in self.seconds.items()}
