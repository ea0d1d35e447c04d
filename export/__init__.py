"""ONNX export and TensorRT engine building for SAM4D's tracker stages (issue 21).

Installed as ``sam4d_export`` (setup.py, CMakeLists.txt), so nothing lands in site-packages as a
bare ``export``; every import inside this package is relative. Commands
(``python -m sam4d_export --help``; in a checkout without an install, ``python -m export``):

- ``onnx``: one ONNX model per stage + ``manifest.json`` (:mod:`.onnx_export`);
- ``build-engines``: TensorRT engines of an export, into the engine cache (build-only mode);
- ``bench``: the tracker step on PyTorch eager vs ONNX Runtime side by side on the bundled
  recording, with mask agreement per sweep (:mod:`.bench`).
"""
