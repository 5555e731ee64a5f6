"""Intel RealSense cameras on pyrealsense2, and synthetic recordings that stand in for them.

`RealSenseCamera` opens a camera by serial number (or plays a recorded .db3/.bag) and delivers
colour + aligned depth from a capture thread; `list_cameras()` lists connected devices.
`drivers.realsense.synthetic` writes recordings with the SDK's software device and recorder.
"""

from drivers.realsense.camera import CameraInfo, RealSenseCamera, list_cameras

__all__ = ["CameraInfo", "RealSenseCamera", "list_cameras"]
