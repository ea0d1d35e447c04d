"""ROS-free core of sam4d_ros: SAM4D model, streaming tracker, geometry, data sets, runtimes.

Nothing in this package imports rclpy or a ROS message type; the ROS side (``sam4d_ros``) converts
messages to numpy arrays at its edge and hands them here.
"""

__version__ = "0.1.0"
