"""ROS 2 message definitions embedded in the logs, as rosbag2 writes them.

Each schema is the type's .msg text followed by every nested type, separated by a
line of 80 '=' and introduced by `MSG: pkg/Type` (the concatenated format that
ROS 2 tools and mcap-ros2-support read).
"""
from __future__ import annotations

SEPARATOR = "=" * 80

_DEFS = {
    "builtin_interfaces/Time": "int32 sec\nuint32 nanosec",
    "std_msgs/Header": "builtin_interfaces/Time stamp\nstring frame_id",
    "geometry_msgs/Point": "float64 x\nfloat64 y\nfloat64 z",
    "geometry_msgs/Quaternion": "float64 x 0\nfloat64 y 0\nfloat64 z 0\nfloat64 w 1",
    "geometry_msgs/Vector3": "float64 x\nfloat64 y\nfloat64 z",
    "geometry_msgs/Pose": "Point position\nQuaternion orientation",
    "geometry_msgs/PoseWithCovariance": "Pose pose\nfloat64[36] covariance",
    "geometry_msgs/Twist": "Vector3  linear\nVector3  angular",
    "geometry_msgs/TwistWithCovariance": "Twist twist\nfloat64[36] covariance",
    "geometry_msgs/PoseStamped": "std_msgs/Header header\nPose pose",
    "geometry_msgs/TwistStamped": "std_msgs/Header header\nTwist twist",
    "std_msgs/MultiArrayDimension": "string label\nuint32 size\nuint32 stride",
    "std_msgs/MultiArrayLayout": "MultiArrayDimension[] dim\nuint32 data_offset",
    "sensor_msgs/JointState": (
        "std_msgs/Header header\n\nstring[] name\nfloat64[] position\nfloat64[] velocity\nfloat64[] effort"
    ),
    "nav_msgs/Odometry": (
        "std_msgs/Header header\nstring child_frame_id\n"
        "geometry_msgs/PoseWithCovariance pose\ngeometry_msgs/TwistWithCovariance twist"
    ),
    "std_msgs/Float64MultiArray": "MultiArrayLayout  layout\nfloat64[]         data",
    "std_msgs/String": "string data",
    "sensor_msgs/CompressedImage": "std_msgs/Header header\nstring format\nuint8[] data",
    "sensor_msgs/Image": (
        "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\nuint32 step\nuint8[] data"
    ),
}

# Nested types of each top-level type, in the order rosbag2 lists them (depth first).
_NESTED = {
    "sensor_msgs/JointState": ["std_msgs/Header", "builtin_interfaces/Time"],
    "nav_msgs/Odometry": [
        "std_msgs/Header",
        "builtin_interfaces/Time",
        "geometry_msgs/PoseWithCovariance",
        "geometry_msgs/Pose",
        "geometry_msgs/Point",
        "geometry_msgs/Quaternion",
        "geometry_msgs/TwistWithCovariance",
        "geometry_msgs/Twist",
        "geometry_msgs/Vector3",
    ],
    "geometry_msgs/PoseStamped": [
        "std_msgs/Header", "builtin_interfaces/Time", "geometry_msgs/Pose", "geometry_msgs/Point",
        "geometry_msgs/Quaternion",
    ],
    "geometry_msgs/TwistStamped": [
        "std_msgs/Header", "builtin_interfaces/Time", "geometry_msgs/Twist", "geometry_msgs/Vector3",
    ],
    "std_msgs/Float64MultiArray": ["std_msgs/MultiArrayLayout", "std_msgs/MultiArrayDimension"],
    "std_msgs/String": [],
    "sensor_msgs/CompressedImage": ["std_msgs/Header", "builtin_interfaces/Time"],
    "sensor_msgs/Image": ["std_msgs/Header", "builtin_interfaces/Time"],
}


def msgdef(ros_type: str) -> str:
    """Concatenated definition of `pkg/msg/Type` (e.g. "nav_msgs/msg/Odometry")."""
    pkg, _, name = ros_type.split("/")
    short = f"{pkg}/{name}"
    parts = [_DEFS[short]] + [f"{SEPARATOR}\nMSG: {n}\n{_DEFS[n]}" for n in _NESTED[short]]
    return "\n".join(parts) + "\n"


JOINT_STATE = "sensor_msgs/msg/JointState"
ODOMETRY = "nav_msgs/msg/Odometry"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
TWIST_STAMPED = "geometry_msgs/msg/TwistStamped"
FLOAT64_MULTI_ARRAY = "std_msgs/msg/Float64MultiArray"
STRING = "std_msgs/msg/String"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
IMAGE = "sensor_msgs/msg/Image"
