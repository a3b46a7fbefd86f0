"""Tokenizer, base model (dtype, bitsandbytes quantization) and the LoRA config.

The only module that imports peft and configures bitsandbytes, so their API churn stays here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model_state_dict, prepare_model_for_kbit_training
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from dpo_lab.config.choices import Quantization
from dpo_lab.config.schemas import LoraSettings, ModelSettings
from dpo_lab.errors import ConfigError
from dpo_lab.model.source import loadable, model_name
from dpo_lab.runtime.hardware import compute_dtype, device_type, resolve_dtype
from dpo_lab.runtime.precision import Precision

log = logging.getLogger(__name__)


def load_tokenizer(cfg: ModelSettings) -> PreTrainedTokenizerBase:
    """Load the tokenizer, install ``model.chat_template`` if given, and insist on a chat template."""
    source = loadable(cfg)  # a GGUF base: its converted plain folder
    folder = Path(source.name_or_path).expanduser()
    if folder.is_dir() and not any((folder / n).is_file() for n in ("config.json", "tokenizer_config.json")):
        raise ConfigError(
            "model.name_or_path", f"{folder} is not a model folder (no config.json or tokenizer_config.json)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.name_or_path, revision=source.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as err:  # not a model folder, an unknown hub id, or no network for it
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            "model.name_or_path", f"cannot load a tokenizer from {model_name(cfg)!r}: {first}"
        ) from None
    if cfg.chat_template is not None:
        tokenizer.chat_template = read_chat_template(cfg.chat_template)
    if not tokenizer.chat_template:
        raise ConfigError(
            "model.chat_template",
            f"the tokenizer of {model_name(cfg)} has no chat template; set model.chat_template to a Jinja "
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
            bnb_4bit_compute_dtype=compute_dtype(precision),
        )
    if quantization is Quantization.int8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def base_model_kwargs(cfg: ModelSettings, precision: Precision) -> dict:
    """``from_pretrained`` arguments of the base: dtype, revision, attention kernel, quantization."""
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
    return kwargs


def load_base_model(
    cfg: ModelSettings, precision: Precision, gradient_checkpointing: bool
) -> PreTrainedModel:
    """Load the frozen base model in the dtype / quantization the config asks for."""
    source = loadable(cfg)
    kwargs = base_model_kwargs(source, precision)
    log.info("loading %s (%s, quantization=%s)", model_name(cfg), kwargs["dtype"], cfg.quantization.value)
    model = AutoModelForCausalLM.from_pretrained(source.name_or_path, **kwargs)
    if "quantization_config" in kwargs:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model


def check_lora_targets(model_cfg: ModelSettings, lora: LoraSettings) -> None:
    """:func:`check_target_modules` on the model's architecture built without weights (on the meta device),
    so that a misspelt ``lora.target_modules`` fails before the weights load (``all-linear`` needs none)."""
    if list(lora.target_modules) == ["all-linear"]:
        return
    from accelerate import init_empty_weights

    source = loadable(model_cfg)
    config = AutoConfig.from_pretrained(
        source.name_or_path, revision=source.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
    check_target_modules(skeleton, list(lora.target_modules))


def check_target_modules(model: torch.nn.Module, target_modules: object) -> None:
    """ConfigError naming ``lora.target_modules`` when one of the listed module names matches no module of
    ``model`` (PEFT matches a name, or a name's last dotted parts); lists the linear layers there are."""
    if not isinstance(target_modules, (list, tuple, set)):
        return  # "all-linear" or a regular expression: PEFT resolves it
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in target_modules if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        raise ConfigError(
            "lora.target_modules",
            f"no module named {', '.join(map(repr, missing))} in {type(model).__name__}; its linear layers: "
            f"{', '.join(linear)} (or [all-linear])",
        )


def build_lora_config(cfg: LoraSettings) -> PeftLoraConfig:
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


def load_adapter_model(cfg: ModelSettings, adapter_dir: Path, precision: Precision) -> PeftModel:
    """The run's base model (its dtype and quantization) with the trained adapter attached, for inference."""
    source = loadable(cfg)
    kwargs = base_model_kwargs(source, precision)
    log.info("loading %s (%s, quantization=%s)", model_name(cfg), kwargs["dtype"], cfg.quantization.value)
    base = AutoModelForCausalLM.from_pretrained(source.name_or_path, **kwargs)
    if "device_map" not in kwargs and device_type() == "cuda":
        base = base.to("cuda")
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


@contextmanager
def adapter_disabled(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """Inside the block the model answers as its base: the PEFT adapter is switched off."""
    if not isinstance(model, PeftModel):
        raise TypeError(f"expected a model with a PEFT adapter, got {type(model).__name__}")
    with model.disable_adapter():
        yield model


@dataclass
class MergedModel:
    """A base model with the adapter folded into its weights, and how it was made."""

    model: PreTrainedModel
    dtype: torch.dtype
    # the base's bitsandbytes storage ("nf4", "int8") it was dequantized from; None = not quantized
    dequantized_from: str | None
    # largest |logit difference| between the adapter model and the merged model on the probe input
    max_logit_diff: float


def merge_adapter(
    cfg: ModelSettings,
    adapter_dir: Path,
    precision: Precision,
    dtype: torch.dtype | None,
    probe_ids: torch.Tensor,
) -> MergedModel:
    """Fold the LoRA adapter into the base weights. A 4-bit / 8-bit base is dequantized to ``dtype``
    first (merging into quantized weights would round the update away); ``dtype`` None = the run's base
    dtype. The adapter model's logits on ``probe_ids`` (shape [1, seq]) are compared with the result's.

    The quantized base is dequantized straight after loading: on CPUs with AVX512-BF16, bitsandbytes
    repacks 4-bit weights into a CPU layout at the first forward in eval mode, and dequantizing a
    repacked weight gives wrong values. So the reference logits come from a separate load."""
    cfg = loadable(cfg)
    kwargs = base_model_kwargs(cfg, precision)
    quantized = "quantization_config" in kwargs
    if dtype is not None and not quantized:
        kwargs["dtype"] = dtype
    target = dtype or kwargs["dtype"]
    adapter_model = _with_adapter(
        AutoModelForCausalLM.from_pretrained(cfg.name_or_path, **kwargs), adapter_dir
    )
    reference = _logits(adapter_model, probe_ids)
    if quantized:
        del adapter_model
        log.info("dequantizing the %s base to %s before merging", cfg.quantization.value, target)
        base = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, **kwargs).dequantize(dtype=target)
        adapter_model = _with_adapter(base, adapter_dir)
    merged = adapter_model.merge_and_unload(safe_merge=True).to(target)
    diff = (_logits(merged, probe_ids) - reference).abs().max().item()
    log.info("merged; max |logit difference| to the adapter model on the probe: %.3g", diff)
    return MergedModel(
        model=merged,
        dtype=target,
        dequantized_from=cfg.quantization.value if quantized else None,
        max_logit_diff=diff,
    )


def _with_adapter(base: PreTrainedModel, adapter_dir: Path) -> PeftModel:
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def _logits(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=input_ids.to(model.device)).logits.float().cpu()


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights as PEFT saves them (same names as in ``adapter_model.safetensors``)."""
    return get_peft_model_state_dict(model)


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
