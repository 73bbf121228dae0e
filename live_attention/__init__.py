"""live-attention: see, live, where a Vision Transformer looks."""

from __future__ import annotations

__version__ = "0.1.0"

from live_attention.engine import AttentionEngine, RunOutput, load_model  # noqa: E402

__all__ = ["AttentionEngine", "RunOutput", "load_model", "__version__"]
