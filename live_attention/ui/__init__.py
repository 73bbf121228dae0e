"""The user interface: the picture of a frame with its HUD (:mod:`~live_attention.ui.frame`,
:mod:`~live_attention.ui.hud`), the key bindings (:mod:`~live_attention.ui.keys`), the key controller
and the Dear PyGui window. The library (``core/``) never imports it.
"""
