"""Every file name of a run folder, declared once. Code asks a RunLayout for a path, never spells a name.

<run>/config.yaml          the resolved config (a rerun into the folder must match it)
<run>/checkpoints/         Trainer checkpoints (checkpoint-<step>/), newest complete one resumed
<run>/log_history.jsonl    every Trainer log, a line each (the sweep report's curves)
<run>/samples_<phase>.jsonl  task-evaluation answers before / after training
<run>/heldout_pairs_<phase>.jsonl  the held-out evaluation per pair, before / after training
<run>/reward_kl.jsonl      samples of held-out prompts scored by a reward, with their KL (eval.reward_kl)
<run>/compare/vs-<b>.jsonl  dpo-lab compare against run b (or base), a summary .json beside it
<run>/adapter/             the trained LoRA adapter, tokenizer and model card
<run>/README.md            the model card
<run>/metrics.json         final metrics, written last: "status": "completed" means the rest is there
<run>/wandb_run.json       the W&B run's id, project and mode (a resumed attempt continues it)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.yaml"
OVERRIDES_FILE = "overrides.yaml"
EVAL_BEFORE_FILE = "eval_before.json"
CHECKPOINTS_DIR = "checkpoints"
HISTORY_FILE = "log_history.jsonl"
ADAPTER_DIR = "adapter"
CARD_FILE = "README.md"
METRICS_FILE = "metrics.json"
# the W&B run id, project and mode of the run (a resumed attempt continues that run)
WANDB_RUN_FILE = "wandb_run.json"
# held (fcntl.flock) by the one process that runs in the folder (runs/lock.py)
LOCK_FILE = ".dpo_lab.lock"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def overrides(self) -> Path:
        return self.root / OVERRIDES_FILE

    @property
    def eval_before(self) -> Path:
        return self.root / EVAL_BEFORE_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def history(self) -> Path:
        return self.root / HISTORY_FILE

    @property
    def adapter(self) -> Path:
        return self.root / ADAPTER_DIR

    @property
    def card(self) -> Path:
        return self.root / CARD_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def wandb_run(self) -> Path:
        return self.root / WANDB_RUN_FILE

    def comparison(self, other: str) -> Path:
        """``compare/vs-<other>.jsonl``: ``dpo-lab compare`` of this run against another run or its base."""
        return self.root / "compare" / f"vs-{other}.jsonl"

    def heldout_pairs(self, phase: str) -> Path:
        """``heldout_pairs_before.jsonl`` / ``_after.jsonl``: the held-out evaluation per pair (rewards,
        margin, log-probs, loss, tie-aware correctness), keyed by a stable pair id."""
        return self.root / f"heldout_pairs_{phase}.jsonl"

    @property
    def reward_kl(self) -> Path:
        """``reward_kl.jsonl``: per held-out prompt, the policy's and the base's samples, rewards and the KL
        estimates (eval.reward_kl)."""
        return self.root / "reward_kl.jsonl"

    def samples(self, phase: str) -> Path:
        """``samples_before.jsonl`` / ``samples_after.jsonl``."""
        return self.root / f"samples_{phase}.jsonl"
