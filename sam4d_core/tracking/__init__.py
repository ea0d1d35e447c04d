"""Streaming tracking: the frame-by-frame API the ROS node (and any other live user) drives."""
