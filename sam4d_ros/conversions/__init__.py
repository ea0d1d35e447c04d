"""ROS message <-> numpy adapters at the node's edge (PointCloud2, Image, CompressedImage,
CameraInfo, TransformStamped, stamps).

Readers are duck-typed and accept rclpy or rosbags message objects; builders return rclpy
messages. The format logic lives in the ROS-free ``sam4d_core.codecs``; malformed messages raise
its ``CodecError`` subclasses. Message packages are imported inside the builders, so importing
this package needs no ROS installation.
"""
