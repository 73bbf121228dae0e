"""The parts of ``live-attention bench``, one module per kind of figure; :mod:`live_attention.commands.bench`
runs the ones asked for."""
