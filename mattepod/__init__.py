"""MattePod: streaming video matting (SAM 2 prompts + MatAnyone), one orchestration layer for every face."""

__version__ = "0.1.0"
