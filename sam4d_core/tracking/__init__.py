"""Streaming tracking: the frame-by-frame API the ROS node (and any other live user) drives.

Modules (import them directly; this package imports nothing so that ``records`` stays light):
:mod:`.records` (prompts in, results out), :mod:`.streaming_tracker` (``StreamingTracker``,
``TrackerConfig``), :mod:`.offline_predictor` (the official ``SAM4DPredictor`` API on whole
sequences), :mod:`.engine` (the per-object step logic both share), :mod:`.reprompt`
(motion-compensated re-prompting), :mod:`.mask_refine` (masks refined with the sweep's geometry,
image clicks lifted to 3D), :mod:`.zoom` (a prompted camera's mask decoded again on a window
around the prompt), :mod:`.boundary_refine` (camera masks refined by a small learned network on
their image crop), :mod:`.benchmark` and
:mod:`.soak` (commands: latency per stage, memory over 1,000 steps).
"""
