"""Tokenizer and base model loading, LoRA config, and the hardware/precision they depend on."""
