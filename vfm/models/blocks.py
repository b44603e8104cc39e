"""Which modules are transformer blocks: the unit that FSDP wraps, activation checkpointing recomputes and
``torch.compile`` compiles, in every tower of every recipe (video ViT, CLIP text tower, fusion, teachers)."""

from __future__ import annotations

from torch import nn

from vfm.models.fusion import FusionLayer
from vfm.models.layers import Block

# open_clip's and HuggingFace's blocks are matched by class name: no import of their modelling code needed.
BLOCK_CLASS_NAMES = frozenset({"ResidualAttentionBlock", "CustomResidualAttentionBlock", "BertLayer"})


def is_transformer_block(module: nn.Module) -> bool:
    return isinstance(module, (Block, FusionLayer)) or type(module).__name__ in BLOCK_CLASS_NAMES


def block_types(model: nn.Module) -> set[type[nn.Module]]:
    """The transformer block classes that occur in ``model``."""
    return {type(module) for module in model.modules() if is_transformer_block(module)}


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The outermost transformer blocks of ``model`` in module order (a block inside a block is not listed)."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if is_transformer_block(child):
                found.append(child)
            else:
                visit(child)

    visit(model)
    return found


def first_block(model: nn.Module) -> nn.Module | None:
    blocks = transformer_blocks(model)
    return blocks[0] if blocks else None


def is_frozen(module: nn.Module) -> bool:
    """True for a module with parameters none of which is trained (a frozen teacher, frozen layers)."""
    params = list(module.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The largest frozen subtrees of ``model`` (a frozen teacher as one module, not its every layer)."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if is_frozen(child):
                found.append(child)
            else:
                visit(child)

    if is_frozen(model):
        return [model]
    visit(model)
    return found


def compile_blocks(model: nn.Module, **options) -> int:
    """``torch.compile`` every outermost transformer block of ``model`` in place (``module.compile``: parameter
    names and checkpoints are unchanged); returns how many. Per block rather than per tower: the towers'
    Python (token dropping, masks) stays eager, each block is one graph, and FSDP units (blocks) wrap it."""
    blocks = transformer_blocks(model)
    for block in blocks:
        block.compile(**options)
    return len(blocks)
