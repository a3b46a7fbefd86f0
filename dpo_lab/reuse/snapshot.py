"""The mutable state of a loaded base model besides its weights, captured right after loading and put back
after each job, so that the next job of the process gets the model as it was loaded (or a fresh load)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

_PRIMITIVES = (bool, int, float, str, type(None))


_HOOK_DICTS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks",
)  # fmt: skip


@dataclass(frozen=True)
class ModelSnapshot:
    """The mutable state of a loaded model that a training job may change, besides its weights' values.

    Per module: the names of its instance attributes and the values of the plain ones (``training``,
    dropout ``p``, ``gradient_checkpointing``...), its hooks; per parameter: ``requires_grad``, dtype and
    device; the model config and generation config. Weight values are not copied (that would double the
    memory): the base weights are frozen while the adapter trains, and the tests compare them to a fresh load.
    """

    attrs: dict[str, dict[str, Any]]
    attr_names: dict[str, frozenset[str]]
    hooks: dict[str, dict[str, frozenset[int]]]
    params: dict[str, tuple[bool, str, str]]
    config: dict[str, Any]

    @classmethod
    def capture(cls, model: PreTrainedModel) -> ModelSnapshot:
        modules = dict(model.named_modules())
        return cls(
            attrs={n: _plain_attrs(m) for n, m in modules.items()},
            attr_names={n: frozenset(m.__dict__) for n, m in modules.items()},
            hooks={n: {h: frozenset(getattr(m, h, {})) for h in _HOOK_DICTS} for n, m in modules.items()},
            params={n: (p.requires_grad, str(p.dtype), str(p.device)) for n, p in model.named_parameters()},
            config=_configs(model),
        )

    def restore(self, model: PreTrainedModel) -> None:
        """Undo what a job changed: extra instance attributes and hooks, plain attribute values,
        ``requires_grad`` flags and top-level config values."""
        for name, module in model.named_modules():
            if name not in self.attr_names:
                continue  # a module the job added; differences() reports it
            for attr in set(module.__dict__) - self.attr_names[name]:
                del module.__dict__[attr]  # e.g. TRL's patched ``forward``, ``model_tags``
            module.__dict__.update(self.attrs[name])
            for hook_dict in _HOOK_DICTS:
                hooks = getattr(module, hook_dict, None)
                if hooks is not None:
                    for hook_id in set(hooks) - self.hooks[name][hook_dict]:
                        del hooks[hook_id]
        for name, param in model.named_parameters():
            if name in self.params:
                param.requires_grad_(self.params[name][0])
        now = model.config.to_dict()
        for key, value in self.config["config"].items():
            if now.get(key) != value and isinstance(value, _PRIMITIVES):
                setattr(model.config, key, value)

    def differences(self, model: PreTrainedModel) -> list[str]:
        """What still differs from the snapshot (empty when the model is as it was loaded)."""
        other = ModelSnapshot.capture(model)
        found = []
        for part in ("attr_names", "attrs", "hooks", "params", "config"):
            mine, theirs = getattr(self, part), getattr(other, part)
            if mine != theirs:
                keys = set(mine) ^ set(theirs) or {k for k in mine if mine[k] != theirs.get(k)}
                found.append(f"{part}: {sorted(keys)[:5]}")
        return found


def _plain_attrs(module: torch.nn.Module) -> dict[str, Any]:
    return {k: v for k, v in module.__dict__.items() if isinstance(v, _PRIMITIVES)}


def _configs(model: PreTrainedModel) -> dict[str, Any]:
    generation = getattr(model, "generation_config", None)
    return {"config": model.config.to_dict(), "generation": generation.to_dict() if generation else None}
