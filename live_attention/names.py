"""The names the package's parts share, each written once: the built-in modes, the maps a result
carries, and the map kinds ``evaluate`` scores.

A mode's name is what ``--mode``, configs, the key table, the HUD and a recording's view say; its
behaviour lives in :mod:`live_attention.modes`. A map's name is a field of
:class:`~live_attention.datatypes.Result`, what :class:`~live_attention.datatypes.MapSettings` asks the
worker for, and a key of a recording's rows. This module imports nothing, so every layer may use it
(``--help`` included, which must not import torch).
"""

from __future__ import annotations

from typing import Final

# The built-in modes, in key order (1-8).
ATTENTION: Final = "attention"
ROLLOUT: Final = "rollout"
HEADS: Final = "heads"
ENTROPY: Final = "entropy"
QUERY: Final = "query"
FLOW: Final = "flow"
RELEVANCE: Final = "relevance"
NORMS: Final = "norms"
BUILTIN_MODES: Final = (ATTENTION, ROLLOUT, HEADS, ENTROPY, QUERY, FLOW, RELEVANCE, NORMS)

# The maps of a result beyond the modes' own names (rollout, query, relevance and the class-row
# entropy share theirs). MapSettings.maps asks for rollout, patch entropy and token norms (and, with
# query, for a query row kept whatever the patch); relevance is asked by MapSettings.relevance and a
# query's rows by MapSettings.query_patch. The class token's attention, its row entropy and the prefix
# share come with every frame.
CLS: Final = "cls"
PATCH_ENTROPY: Final = "patch_entropy"
TOKEN_NORM: Final = "token_norm"
PREFIX_SHARE: Final = "prefix_share"

# What `evaluate` scores: faithfulness (--kinds) and temporal stability (--temporal --kinds).
RANDOM: Final = "random"
EVALUATION_KINDS: Final = (CLS, ROLLOUT, FLOW, RELEVANCE, RANDOM)
TEMPORAL_KINDS: Final = (CLS, ROLLOUT, RELEVANCE, ENTROPY, NORMS)  # entropy: patch entropy; norms: token norms
