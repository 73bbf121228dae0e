"""The browser as a second window (``live-attention serve``): an aiohttp server whose pages show the
frame loop's picture and send keys, clicks and (``--source browser``) the browser's camera.

Modules: :mod:`.display` (the frame loop's :class:`~live_attention.pipeline.loop.Display` for web
viewers, and the checks on what pages send), :mod:`.source` (the browser's camera as a frame source),
:mod:`.server` (HTTP, WebSocket and WebRTC on a thread of its own). Only :mod:`.server` imports aiohttp
and aiortc.
"""
