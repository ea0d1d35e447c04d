"""Training of SAM4D: clips, interactive prompt simulation, losses and the loop.

Modules:

- :mod:`.config`: dataclass configurations (data, augmentation, prompts, losses, optimisation,
  the run) and their YAML loading (named configs live in ``training/configs/``);
- :mod:`.datasets`: clip sources (synthetic on the fly, Waymo-4DSeg directories, rosbag2
  recordings with ground truth, in-memory sequences), label filters, augmentation and targets;
- :mod:`.prompt_simulation`: first-frame clicks / boxes / masks from ground truth and corrective
  clicks from the error region, in the image or in the point cloud;
- :mod:`.losses`: focal + dice (image and per-point LiDAR masks), IoU prediction, object presence;
- :mod:`.clip_forward`: one clip through the model blocks with gradients (SAM2's
  ``forward_tracking`` for SAM4D);
- :mod:`.validation`: first-frame-prompt mIoU on held-out clips;
- :mod:`.logger`: TensorBoard or JSONL scalars, a progress bar;
- :mod:`.train`: the loop (``python -m training.train --help``);
- :mod:`.model_setup`: the model (init checkpoint, reinit, freeze), AdamW groups, the
  learning-rate schedule and AMP of a run;
- :mod:`.generate_data`: pre-generate a synthetic training set in Waymo-4DSeg layout;
- :mod:`.export_weights`: a checkpoint's weights only (optionally float16) for shipping;
- :mod:`.evaluate`: the streaming evaluation of a checkpoint (JSON and a Markdown table);
- :mod:`.cli`: the docstring-based argument parser of these commands;
- :mod:`.analysis`: research tools (attention locality, resolution ceiling, KITTI overlays), run
  as ``python -m training.analysis.<name>``.

Installed with pip this package is ``sam4d_training`` (and ``sam4d_training.analysis``; setup.py),
so every import inside it is relative.
"""
