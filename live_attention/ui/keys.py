"""The key bindings, written once: the controller dispatches on them, the help lists them, and the web
page may send the keys they name (:data:`~live_attention.web.display.PAGE_KEYS`).

Keys are named as the window names them (``"up"``, ``"6"``, ``"space"``, lower case). A mode's key
comes from its class (:mod:`live_attention.modes`), so a new mode has its key and its place in the help.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from live_attention.modes import all_modes, first


@dataclass(frozen=True)
class KeyLine:
    """One line of the help: how it names its keys, what they do, and each key's action for the
    :class:`~live_attention.ui.controller.Controller` (no keys: a line that explains, e.g. a click)."""

    label: str
    does: str
    actions: dict[str, str] = field(default_factory=dict)  # key name -> action
    page: bool = True  # a web page may send these keys (not quit: one viewer must not stop the others)


def key_lines() -> list[KeyLine]:
    """The bindings, in the help's order (built from the registered modes each time)."""
    modes = all_modes()
    relevance, query, flow = first("explains_class"), first("picks_patch"), first("later")
    whole = [m.key for m in modes if not m.picks_layer]
    every_layer = ", ".join(whole[:-1]) + " and " + whole[-1] if len(whole) > 1 else "".join(whole)
    return [
        KeyLine("Up / Down", "layer", {"up": "layer_up", "down": "layer_down"}),
        KeyLine("Left / Right", "head (past the ends: all heads)", {"right": "head_next", "left": "head_prev"}),
        KeyLine("0 / Backspace", "all heads fused", {"0": "heads_fused", "backspace": "heads_fused"}),
        KeyLine("F", "fusion: mean / max / min", {"f": "fusion"}),
        KeyLine(f"{modes[0].key}-{modes[-1].key}, M", "mode: " + " ".join(m.name for m in modes),
                {**{m.key: "mode" for m in modes}, "m": "next_mode"}),
        KeyLine("T / click a label", f"the class {relevance.name} explains ({relevance.key})", {"t": "target"}),
        KeyLine("J", "smoothing over time on / off", {"j": "smooth"}),
        KeyLine("Tab", "--compare: which model the head keys move (where the head counts differ)", {"tab": "head_side"}),
        KeyLine("D", "--compare: the difference of the two maps in the right half", {"d": "difference"}),
        KeyLine("A", f"animate through the layers (not {every_layer}, which use every layer)", {"a": "animate"}),
        KeyLine("Space", "freeze the frame", {"space": "freeze"}),
        KeyLine("Click", f"pick the {query.name} patch (mode {query.key})"),
        KeyLine(f"{flow.key} while frozen", f"compute {flow.title.lower()}"),
        KeyLine("+ / -", "overlay opacity", {"+": "opacity_up", "-": "opacity_down"}),
        KeyLine("C", "colormap", {"c": "colormap"}),
        KeyLine("R", "start / stop recording", {"r": "record"}),
        KeyLine("S", "save a screenshot", {"s": "screenshot"}),
        KeyLine("H", "this help", {"h": "help"}),
        KeyLine("Q / Esc", "quit", {"q": "quit", "esc": "quit"}, page=False),
    ]


def help_lines() -> list[tuple[str, str]]:
    """The help: (keys, what they do) per line."""
    return [(line.label, line.does) for line in key_lines()]


def actions() -> dict[str, str]:
    """Each key name's action."""
    return {key: action for line in key_lines() for key, action in line.actions.items()}


def page_keys() -> frozenset[str]:
    """The keys a web page may send."""
    return frozenset(key for line in key_lines() if line.page for key in line.actions)
