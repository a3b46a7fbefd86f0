"""Tokenizer, base model (dtype, bitsandbytes quantization) and the LoRA config.

The only module that imports peft and configures bitsandbytes, so their API churn stays here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import prepare_model_for_kbit_training
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from dpo_lab.config import ConfigError, LoraConfig, ModelConfig, Precision, Quantization
from dpo_lab.hardware import device_type, resolve_dtype

log = logging.getLogger(__name__)

_COMPUTE_DTYPES = {
    Precision.bf16: torch.bfloat16,
    Precision.fp16: torch.float16,
    Precision.fp32: torch.float32,
}


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """Load the tokenizer, install ``model.chat_template`` if given, and insist on a chat template."""
    tokenizer = AutoTokenizer.from_pretrained(
        cfg.name_or_path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
    )
    if cfg.chat_template is not None:
        tokenizer.chat_template = read_chat_template(cfg.chat_template)
    if not tokenizer.chat_template:
        raise ConfigError(
            "model.chat_template",
            f"the tokenizer of {cfg.name_or_path} has no chat template; set model.chat_template to a Jinja "
            "template (inline, or a path to a .jinja file)",
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def read_chat_template(value: str) -> str:
    """``model.chat_template`` is either a path to a template file or the template itself."""
    if "{" not in value:
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError("model.chat_template", f"no such template file: {value}")
        return path.read_text()
    return value


def bnb_config(quantization: Quantization, precision: Precision) -> BitsAndBytesConfig | None:
    """bitsandbytes settings for the frozen base: nf4 (QLoRA) with double quantization, or LLM.int8()."""
    if quantization is Quantization.nf4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=_COMPUTE_DTYPES[precision],
        )
    if quantization is Quantization.int8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_base_model(cfg: ModelConfig, precision: Precision, gradient_checkpointing: bool) -> PreTrainedModel:
    """Load the frozen base model in the dtype / quantization the config asks for."""
    device = device_type()
    kwargs: dict = {
        "dtype": resolve_dtype(cfg.dtype, precision, device),
        "revision": cfg.revision,
        "trust_remote_code": cfg.trust_remote_code,
    }
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    quant = bnb_config(cfg.quantization, precision)
    if quant is not None:
        kwargs["quantization_config"] = quant
        if device == "cuda":
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    log.info("loading %s (%s, quantization=%s)", cfg.name_or_path, kwargs["dtype"], cfg.quantization.value)
    model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, **kwargs)
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model


def build_lora_config(cfg: LoraConfig) -> PeftLoraConfig:
    """peft.LoraConfig for a causal LM from the ``lora`` group."""
    targets: str | list[str] = list(cfg.target_modules)
    if targets == ["all-linear"]:
        targets = "all-linear"
    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        bias=cfg.bias,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        task_type="CAUSAL_LM",
    )


def strip_adapters(model: PreTrainedModel) -> int:
    """Put every PEFT-wrapped layer of ``model`` back to its original base layer, in place, without merging.

    Works on the base model a PeftModel wrapped (PEFT injects its layers into it), also when the job that
    attached the adapter failed before any PeftModel was returned. Returns how many layers were unwrapped.
    """
    wrapped = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    outermost = [(n, m) for n, m in wrapped if not any(n.startswith(o + ".") for o, _ in wrapped if o != n)]
    for name, module in outermost:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return len(outermost)
