"""Offline runs, on files rather than a camera: rendering files (:mod:`~live_attention.offline.renderer`,
through the overlapped batch path of :mod:`~live_attention.offline.batch`, or Ray workers in
:mod:`~live_attention.offline.distributed`) and the evaluations (faithfulness in
:mod:`~live_attention.offline.evaluation`, flicker and smoothing in :mod:`~live_attention.offline.temporal_eval`).
The live threads and the one frame loop are in :mod:`live_attention.pipeline`."""
