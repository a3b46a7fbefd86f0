"""Paths of the small assets bundled with dpo_lab.

- ``FINANCE_DATA_DIR``: the synthetic finance preference dataset (``train.jsonl``, ``test.jsonl``),
  built by ``scripts/build_finance_data.py``.
- ``TINY_MODEL_DIR``: a tiny Llama chat model with its tokenizer, loadable with
  ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``, built by
  ``scripts/build_tiny_model.py`` (pre-trained on the finance TRAIN split).
"""

from pathlib import Path

ASSETS_DIR: Path = Path(__file__).resolve().parent
FINANCE_DATA_DIR: Path = ASSETS_DIR / "finance"
TINY_MODEL_DIR: Path = ASSETS_DIR / "tiny-llama"

__all__ = ["ASSETS_DIR", "FINANCE_DATA_DIR", "TINY_MODEL_DIR"]
