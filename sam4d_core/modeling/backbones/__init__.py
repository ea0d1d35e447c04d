"""Feature extractors: the LiDAR encoder (MinkUNet) and, alongside it, the image encoder."""
