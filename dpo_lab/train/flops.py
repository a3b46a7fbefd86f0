"""A FLOP model of one DPO + LoRA training step, the device's measured matmul peak, and MFU.

What is counted (matmul FLOPs only; one multiply-add = 2 FLOPs), for a batch of 2B sequences (B chosen +
B rejected, each prompt + completion) with T = total non-padding tokens, C = completion tokens (the
positions whose log-prob the loss needs) and S2 = sum over sequences of (sequence length)^2:

* policy forward through the frozen base: ``2 * N_base * T`` (every linear layer of the decoder), the LM
  head only on completion positions ``2 * N_head * C`` (TRL's fused head scores only labelled positions),
  and attention's score and value products ``4 * L * d_attn * S2`` (QK^T and AV, the full T x T square
  as the kernels compute it, not halved for the causal mask, as in PaLM's MFU count);
* policy backward: activation gradients through the frozen weights ``2 * N_base * T + 2 * N_head * C``,
  attention's backward ``8 * L * d_attn * S2`` (dQ, dK, dV, dP), and NO weight gradients for frozen
  weights (they need none);
* LoRA's own matrices: forward ``2 * N_lora * T``, backward ``4 * N_lora * T`` (activation gradients and
  weight gradients);
* the reference forward (base with the adapter off),
  ``2 * N_base * T + 2 * N_head * C + 4 * L * d_attn * S2``, unless the reference log-probs were
  precomputed before training.

A job trained in a pack of K (``hydra/launcher=packed``, dpo_lab.packed.pack) runs its own policy forward
and backward, with its own LoRA matrices, over its copy of the batch, and shares one reference forward with
the other K-1 jobs (:func:`packed_flop_report`): its own FLOPs are its policy terms plus 1/K of the
reference forward, and the pack's are the sum over its jobs (the reference forward once). The job's MFU is
its own FLOPs over the pack's training time, so the jobs' MFUs add up to the pack's.

Not counted: elementwise work (norms, activations, softmax, rotary, the loss), embedding look-ups, the
recomputed forward of gradient checkpointing (MFU counts the model's FLOPs, not the hardware's), padding
tokens. The activation gradient into the first layer's q/k/v inputs is counted although autograd skips it
when the embeddings are frozen and checkpointing is off: an over-count of ~2% on the tiny model, 0.2% at 1B.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class ModelShapes:
    """The sizes the FLOP model needs, read off a (PEFT-wrapped) causal LM by :func:`model_shapes`."""

    n_layers: int  # decoder layers L
    d_attn: int  # num_attention_heads * head_dim: width of the QK^T and AV products
    base_matmul_params: int  # N_base: in*out of every frozen linear layer of the decoder (not the LM head)
    lm_head_params: int  # N_head: vocab * hidden
    lora_params: int  # N_lora: elements of every LoRA A and B matrix

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class TokenCounts:
    """Token totals of the sequences trained on: T, C and S2 of the module docstring."""

    tokens: float  # T: non-padding tokens over all chosen and rejected sequences
    completion_tokens: float  # C: tokens whose log-prob enters the loss
    sum_sq_lengths: float  # S2: sum over sequences of length^2


def matmul_flops(m: int, k: int, n: int) -> int:
    """FLOPs of an (m x k) @ (k x n) product: ``2 * m * k * n``."""
    return 2 * m * k * n


def forward_flops(shapes: ModelShapes, counts: TokenCounts, *, with_lora: bool) -> float:
    """Matmul FLOPs of one forward pass over ``counts`` (base, LM head on completions, attention, LoRA)."""
    base = 2 * shapes.base_matmul_params * counts.tokens
    head = 2 * shapes.lm_head_params * counts.completion_tokens
    attention = 4 * shapes.n_layers * shapes.d_attn * counts.sum_sq_lengths
    lora = 2 * shapes.lora_params * counts.tokens if with_lora else 0
    return base + head + attention + lora


def backward_flops(shapes: ModelShapes, counts: TokenCounts) -> float:
    """Matmul FLOPs of the policy's backward: activation gradients everywhere, weight gradients for LoRA."""
    base = 2 * shapes.base_matmul_params * counts.tokens
    head = 2 * shapes.lm_head_params * counts.completion_tokens
    attention = 8 * shapes.n_layers * shapes.d_attn * counts.sum_sq_lengths
    lora = 4 * shapes.lora_params * counts.tokens
    return base + head + attention + lora


def dpo_step_flops(shapes: ModelShapes, counts: TokenCounts, *, reference_forward: bool) -> dict[str, float]:
    """FLOPs of DPO training over ``counts`` tokens, by term (linear in T, C and S2, so any number of steps).

    Returns ``{"policy_forward", "policy_backward", "reference_forward", "total"}``; ``reference_forward``
    is 0 when the reference log-probs were precomputed.
    """
    terms = {
        "policy_forward": forward_flops(shapes, counts, with_lora=True),
        "policy_backward": backward_flops(shapes, counts),
        "reference_forward": forward_flops(shapes, counts, with_lora=False) if reference_forward else 0.0,
    }
    terms["total"] = sum(terms.values())
    return terms


def mfu(flops: float, seconds: float, peak_flops_per_s: float) -> float:
    """Model-FLOPs utilisation: achieved model FLOP/s over the device's peak (0 when undefined)."""
    if seconds <= 0 or peak_flops_per_s <= 0:
        return 0.0
    return flops / seconds / peak_flops_per_s


def sequence_lengths(prompt: int, completion: int, max_length: int | None) -> tuple[int, int]:
    """(sequence length, completion tokens scored) of one prompt + completion after keep-start truncation."""
    total = prompt + completion if max_length is None else min(prompt + completion, max_length)
    return total, max(0, total - prompt)


def token_ratios(rows: Iterable[tuple[int, int, int]], max_length: int | None) -> dict[str, float]:
    """C/T and S2/T over tokenised pairs ``(len(prompt_ids), len(chosen_ids), len(rejected_ids))``.

    Training sees a sample of these rows; T is counted exactly by the Trainer, and these ratios turn it into
    C and S2 (exact for whole epochs, an estimate for a part of one).
    """
    tokens = completion = sum_sq = 0
    for prompt, chosen, rejected in rows:
        for answer in (chosen, rejected):
            length, scored = sequence_lengths(prompt, answer, max_length)
            tokens += length
            completion += scored
            sum_sq += length * length
    if tokens == 0:
        return {"completion_per_token": 0.0, "sum_sq_per_token": 0.0}
    return {"completion_per_token": completion / tokens, "sum_sq_per_token": sum_sq / tokens}


def counts_from_ratios(tokens: float, ratios: dict[str, float]) -> TokenCounts:
    """TokenCounts for ``tokens`` non-padding tokens drawn from data with the given :func:`token_ratios`."""
    return TokenCounts(
        tokens=tokens,
        completion_tokens=tokens * ratios["completion_per_token"],
        sum_sq_lengths=tokens * ratios["sum_sq_per_token"],
    )


def model_shapes(model: torch.nn.Module) -> ModelShapes:
    """Read :class:`ModelShapes` off a causal LM, PEFT-wrapped or not, quantized or not.

    Linear layers are found by type (bitsandbytes' 4/8-bit layers subclass ``torch.nn.Linear``); their
    logical size is ``in_features * out_features`` whatever the storage. LoRA matrices are the linear layers
    under a ``lora_A`` / ``lora_B`` name; the LM head is the model's output embedding.
    """
    lm_head = model.get_output_embeddings()
    base = lora = head = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        size = module.in_features * module.out_features
        parts = name.split(".")
        if "lora_A" in parts or "lora_B" in parts:
            lora += size
        elif module is lm_head:
            head += size
        else:
            base += size
    if head == 0 and lm_head is not None:  # a head that is not an nn.Linear (rare): use its weight
        head = lm_head.weight.numel()
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return ModelShapes(
        n_layers=config.num_hidden_layers,
        d_attn=config.num_attention_heads * head_dim,
        base_matmul_params=base,
        lm_head_params=head,
        lora_params=lora,
    )


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_peak_flops(
    device: str, dtype: torch.dtype, size: int | None = None, repeats: int = 10, warmup: int = 2
) -> float:
    """The device's matmul peak in FLOP/s: the fastest of ``repeats`` timed square products of ``size``.

    Default sizes fill the device (8192 on CUDA, 1024 on CPU, where one product takes ~10-50 ms). The
    fastest run, not the median, because on a shared CPU other processes only ever slow a run down.
    """
    size = size or (8192 if device == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(warmup):
        a @ b
    _sync(device)
    fastest = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _sync(device)
        fastest = min(fastest, time.perf_counter() - start)
    return matmul_flops(size, size, size) / fastest


PEAK_ENV = "DPO_LAB_PEAK_FLOPS"  # a nominal peak in FLOP/s to divide by instead (e.g. a GPU's datasheet)
CACHE_ENV = "DPO_LAB_CACHE"  # where the measured peak is kept (default ~/.cache/dpo_lab)


def machine_peak(device: str, dtype: torch.dtype) -> tuple[float, str]:
    """The matmul peak MFU is divided by, and where it comes from: ``$DPO_LAB_PEAK_FLOPS`` when set (a
    nominal peak), else this machine's peak for the dtype, measured once (the fastest of many products) and
    kept in ``<cache>/peak_flops.json`` under the device, the CPU or GPU model, the dtype, the torch version
    and the thread count. A per-run measurement swung 20x between jobs of one sweep on a loaded machine."""
    nominal = os.environ.get(PEAK_ENV)
    if nominal:
        return float(nominal), f"nominal (${PEAK_ENV})"
    key = "|".join(
        [device, _device_model(device), str(dtype), torch.__version__, str(torch.get_num_threads())]
    )
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dpo_lab") / "peak_flops.json"
    try:
        kept = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        kept = {}
    if key in kept:
        return float(kept[key]["flops_per_s"]), f"measured once on this machine ({kept[key]['measured']})"
    peak = measure_peak_flops(device, dtype, repeats=30)
    when = time.strftime("%Y-%m-%d %H:%M") + f", load {os.getloadavg()[0]:.1f}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({**kept, key: {"flops_per_s": peak, "measured": when}}, indent=1))
        tmp.replace(path)
    except OSError:  # a read-only home: measured for this run only, and said so
        return peak, "measured for this run (the cache could not be written)"
    return peak, f"measured once on this machine ({when})"


def _device_model(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def flop_report(
    shapes: ModelShapes,
    ratios: dict[str, float],
    *,
    tokens: float,
    seconds: float,
    peak_flops_per_s: float,
    reference_forward: bool,
) -> dict[str, Any]:
    """Everything metrics.json records about FLOPs: inputs, terms, achieved FLOP/s and MFU."""
    terms = dpo_step_flops(shapes, counts_from_ratios(tokens, ratios), reference_forward=reference_forward)
    return {
        "shapes": shapes.to_dict(),
        "token_ratios": ratios,
        "reference_forward": reference_forward,
        "train_flops": terms,
        "flops_per_token": terms["total"] / tokens if tokens else 0.0,
        **_rates(terms["total"], seconds, peak_flops_per_s),
        "peak_flops_per_s": peak_flops_per_s,
    }


def packed_flop_report(
    shapes: ModelShapes,
    pack_lora_params: Sequence[int],
    ratios: dict[str, float],
    *,
    tokens: float,
    seconds: float,
    peak_flops_per_s: float,
    reference_forward: bool,
) -> dict[str, Any]:
    """:func:`flop_report` of one job of a pack whose K jobs' LoRA sizes are ``pack_lora_params`` (see the
    module docstring); ``tokens`` and ``seconds`` are the job's own tokens and the pack's training time.
    The pack's terms, FLOP/s and MFU are under ``"pack"``."""
    report = flop_report(shapes, ratios, tokens=tokens, seconds=seconds, peak_flops_per_s=peak_flops_per_s,
                         reference_forward=reference_forward)  # fmt: skip
    counts = counts_from_ratios(tokens, ratios)
    reference = report["train_flops"]["reference_forward"]  # the one reference forward of the pack
    pack = {"policy_forward": 0.0, "policy_backward": 0.0, "reference_forward": reference}
    for lora_params in pack_lora_params:
        job = dpo_step_flops(replace(shapes, lora_params=lora_params), counts, reference_forward=False)
        pack["policy_forward"] += job["policy_forward"]
        pack["policy_backward"] += job["policy_backward"]
    pack["total"] = sum(pack.values())
    own = report["train_flops"]
    own["reference_forward"] = reference / len(pack_lora_params)
    own["total"] = own["policy_forward"] + own["policy_backward"] + own["reference_forward"]
    report["flops_per_token"] = own["total"] / tokens if tokens else 0.0
    report.update(_rates(own["total"], seconds, peak_flops_per_s))
    report["pack"] = {"size": len(pack_lora_params), "lora_params": list(pack_lora_params),
                      "train_flops": pack, **_rates(pack["total"], seconds, peak_flops_per_s)}  # fmt: skip
    return report


def _rates(flops: float, seconds: float, peak_flops_per_s: float) -> dict[str, float]:
    """Achieved FLOP/s and MFU of ``flops`` done in ``seconds``."""
    return {
        "achieved_flops_per_s": flops / seconds if seconds > 0 else 0.0,
        "mfu": mfu(flops, seconds, peak_flops_per_s),
    }
