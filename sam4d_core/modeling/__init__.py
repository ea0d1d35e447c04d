"""The SAM4D model: image and LiDAR encoders, positional encodings, memory, prompts and decoders."""
