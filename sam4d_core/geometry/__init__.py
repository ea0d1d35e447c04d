"""ROS-free geometry helpers used around the tracker (boxes fitted to masks and point sets)."""
