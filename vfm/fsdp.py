"""FSDP for every recipe: each transformer block is one shard unit, frozen parts are left out.

``configs/trainer/fsdp.yaml`` selects `BlockFSDPStrategy`, Lightning's ``FSDPStrategy`` with its wrapping
decided from the model when it is set up, so one config serves every recipe:

- auto-wrap policy: one FSDP unit per transformer block of any tower (`vfm.models.blocks`: the video ViT's
  blocks, the CLIP text tower's, the fusion layers, BERT layers), the rest in the root unit;
- frozen modules (a frozen teacher, frozen early layers, a frozen text tower: every module whose parameters
  all have ``requires_grad=False``) are FSDP's ``ignored_modules``: not sharded, not gathered, kept whole on
  every device, and (having no trainable parameter) never in the optimizer;
- activation checkpointing through the strategy (Lightning applies it after wrapping) on the trainable
  blocks; frozen blocks keep nothing for backward anyway.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from vfm.models.blocks import block_types, frozen_modules, is_frozen, is_transformer_block


def fsdp_settings(model: nn.Module, activation_checkpointing: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """(FSDP keyword arguments, activation checkpointing keyword arguments) for ``model``."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    ignored = frozen_modules(model)
    inside_ignored = {id(module) for frozen in ignored for module in frozen.modules()}
    trainable_blocks = {
        type(module) for module in model.modules() if is_transformer_block(module) and id(module) not in inside_ignored
    }
    wrap = {"auto_wrap_policy": ModuleWrapPolicy(trainable_blocks or block_types(model)), "ignored_modules": ignored}
    checkpointing = {"check_fn": _trainable_block} if activation_checkpointing else {}
    return wrap, checkpointing


def _trainable_block(module: nn.Module) -> bool:
    return is_transformer_block(module) and not is_frozen(module)


class BlockFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy wrapping per transformer block, with frozen modules ignored (see module doc).

    Args:
        activation_checkpointing_blocks: recompute each trainable block's activations in backward.
        sharding_strategy, state_dict_type, cpu_offload and the rest: as ``FSDPStrategy``. ``state_dict_type:
            sharded`` writes a checkpoint folder per step instead of gathering one file on rank 0.
    """

    def __init__(
        self,
        activation_checkpointing_blocks: bool = True,
        sharding_strategy: str = "FULL_SHARD",
        state_dict_type: str = "full",
        **kwargs: Any,
    ) -> None:
        super().__init__(sharding_strategy=sharding_strategy, state_dict_type=state_dict_type, **kwargs)
        self.activation_checkpointing_blocks = activation_checkpointing_blocks

    def _setup_model(self, model: nn.Module) -> nn.Module:
        wrap, checkpointing = fsdp_settings(model, self.activation_checkpointing_blocks)
        for module in wrap["ignored_modules"]:
            module.to(self.root_device)  # FSDP moves only what it manages
        self.kwargs.update(wrap)
        self._activation_checkpointing_kwargs = checkpointing
        return super()._setup_model(model)
