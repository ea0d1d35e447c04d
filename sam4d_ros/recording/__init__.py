"""Conversion between driving-sequence formats on the command line (``python -m
sam4d_ros.recording.convert``): synthetic, Waymo-4DSeg, KITTI raw and nuScenes -> rosbag2, and back.

The rosbag2 reader / writer itself is ROS-free and lives in :mod:`sam4d_core.data.sequence_bag`.
"""
