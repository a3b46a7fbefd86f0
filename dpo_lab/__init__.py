"""dpo_lab: Hydra-configured DPO + LoRA/QLoRA experiments for chat LLMs, tracked in Weights & Biases."""

__version__ = "0.1.0"
