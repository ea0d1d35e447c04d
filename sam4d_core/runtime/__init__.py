"""Stage runtimes of a tracker step: PyTorch, ONNX Runtime and TensorRT behind one interface."""
