"""Loading and saving Prefect blocks from synchronous code, with their real types."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from prefect.blocks.core import Block

B = TypeVar("B", bound="Block")


def load_block(block_type: type[B], name: str) -> B:
    """`block_type.load(name)`, run synchronously even where an event loop is running."""
    # Prefect's async_dispatch wrapper takes `_sync`, but its signature (the sync method's ParamSpec)
    # doesn't list it, and it types the result as `B | Coroutine[..., B]`; with `_sync=True` it is a B.
    block = block_type.load(name, _sync=True)  # type: ignore[call-arg]
    if not isinstance(block, block_type):
        raise TypeError(f"{block_type.__name__}.load({name!r}) returned {type(block).__name__}")
    return block


def save_block(block: Block, name: str) -> None:
    """Save (or overwrite) `block` under `name`, synchronously (see `load_block`)."""
    block.save(name, overwrite=True, _sync=True)  # type: ignore[call-arg]
