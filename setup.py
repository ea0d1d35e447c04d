"""pip installation of the ROS-free parts (training and export machines without ROS 2).

On a vehicle or any ROS 2 machine, build with colcon instead (README.md): the ament_cmake package
generates the interfaces (sam4d_ros.msg / sam4d_ros.srv) and installs the same Python code.
``pip install -e .`` installs ``sam4d_core`` and the rclpy-free modules of ``sam4d_ros``
(conversions, recordings) as well as ``training`` and ``export`` under prefixed names, so nothing
lands in site-packages as a bare ``training`` or ``export``.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

packages = find_packages(include=["sam4d_core", "sam4d_core.*", "sam4d_ros", "sam4d_ros.*"])
package_dir = {}
package_data = {"sam4d_core.weights": ["*.pt", "*.json", "*.md"]}
for source, installed in (("training", "sam4d_training"), ("export", "sam4d_export")):
    if (ROOT / source / "__init__.py").exists():
        package_dir[installed] = source
        packages.append(installed)
        if (ROOT / source / "configs").is_dir():
            package_data[installed] = ["configs/*.yaml"]  # named configs (training/configs)
        for sub in find_packages(where=source):
            packages.append(f"{installed}.{sub}")
            package_dir[f"{installed}.{sub}"] = f"{source}/{sub.replace('.', '/')}"

setup(
    name="sam4d-ros",
    version="0.1.0",
    description="SAM4D camera + LiDAR promptable segmentation: model, tracker, data, ROS 2 edge",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data=package_data,
    include_package_data=False,
    install_requires=[
        "numpy>=1.22",
        "scipy>=1.8",
        "opencv-python-headless>=4.5,<5",
        "pyyaml>=5.4",
        "rosbags>=0.10",
        "torch>=2.1",
    ],
    extras_require={
        "export": ["onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.1"],
        "test": ["pytest>=7", "hypothesis>=6"],
    },
)
