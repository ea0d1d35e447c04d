"""Research tools around training: measurements of a model or a configuration, not part of
training, evaluation or the data pipeline. Each runs as ``python -m training.analysis.<name>``
(installed: ``sam4d_training.analysis``):

- :mod:`.attention_locality`: where the decoder's click token and MCMA's memory attention look
  (mass on the object's tokens, encoding norms, linear probes of object identity);
- :mod:`.resolution_ceiling`: the IoU a configuration's output resolution allows at best (oracle
  low-resolution logits through the model's own upsampling);
- :mod:`.kitti_overlays`: the model on the KITTI raw sample with hand-chosen clicks, as overlay
  pictures (``training/reports/kitti_sample/``).
"""
