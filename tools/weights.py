"""Reading model weights from a local file: tensors only, no pickled code runs."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Keys under which training checkpoints nest the state dict.
NESTED_STATE_KEYS = ("state_dict", "model")


def read_state_dict(path: Path, nested_keys: tuple[str, ...] = NESTED_STATE_KEYS) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: ``.safetensors``, or a torch file loaded with
    ``weights_only=True`` and unwrapped from the first of ``nested_keys`` it holds."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in nested_keys:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise TypeError(f"{path} does not hold a state dict")
    return state
