"""The library: the engine and its model families, the map maths, attention flow, the renderer.

Pure computation and no threads: whoever owns an engine calls it. Imports nothing from the commands,
the pipeline or the window.
"""
