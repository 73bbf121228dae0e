"""live-attention: see, live, where a Vision Transformer looks.

The Python API (``load_model``, ``AttentionEngine``, ``Keep``, ``RunOutput``, ``maps``, ``flow``) loads on
first use, so that importing the package is cheap: it sets the OpenMP wait policy and registers the demo
model and source (``--model demo``, ``--source demo``), whatever the entry point.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import Any

# torch's CPU threads (GNU OpenMP) spin while they wait for each other, 300,000 turns by default. When
# another process holds a core (a browser, a video call) the spinning threads starve the one doing the
# work: the demo model fell from 30 to 2.5 fps headless. Waiting passively after a short spin (10,000
# turns, a few microseconds) keeps it at 30 fps under load, and bridges the gaps between the model's
# back-to-back parallel regions when the machine is idle (bench: see the "load" part). libgomp reads
# these once, when torch loads it, so they are set before torch is imported; a user's own choice wins.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["GOMP_SPINCOUNT"] = "10000"

# The demo registers its model and source by name (the library and io/ never import it). Light: no torch.
import live_attention.demo  # noqa: E402, F401

try:  # one version string: pyproject.toml's, as installed
    __version__ = _dist_version("live-attention")
except PackageNotFoundError:  # a checkout used without installing it
    __version__ = "0+unknown"

_API = {
    "AttentionEngine": "live_attention.core.engine",
    "Keep": "live_attention.core.engine",
    "RunOutput": "live_attention.core.engine",
    "load_model": "live_attention.core.models",
    "maps": "live_attention.core.maps",
    "flow": "live_attention.core.flow",
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'live_attention' has no attribute {name!r}")
    module = importlib.import_module(_API[name])
    value = module if module.__name__.endswith("." + name) else getattr(module, name)
    globals()[name] = value
    return value
