"""The one device resolver: ``engine.device`` (auto, cpu, cuda, cuda:N) -> the torch device string.

Why one: the engine, SAM 2, the person detector and the run each turned "auto" into a device on their own, and
only one of them said clearly what was wrong with a bad value. torch is imported only when called (a network
is about to run).
"""

from __future__ import annotations

from mattepod.errors import ConfigError


def resolve(name: str = "auto") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; cpu / cuda / cuda:N are checked (ConfigError)."""
    import torch

    if name in ("auto", "", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"engine.device {name!r} is not a device", "use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"engine.device {name} is not supported", "use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"engine.device {name} requested but no CUDA GPU is available",
                          "use engine.device: auto or cpu")
    return str(dev)
