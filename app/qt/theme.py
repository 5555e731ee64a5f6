"""Colours and style sheets shared by the workstation's widgets."""

from __future__ import annotations

from drivers import layout

ESTOP_RED = "#c62828"
ESTOP_RED_DOWN = "#8e0000"
OK_GREEN = "#2e7d32"
WARN_AMBER = "#ef6c00"
MUTED = "#757575"

# One colour per arm joint (waist .. wrist_rotate, gripper), reused for both arms.
JOINT_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
)
assert len(JOINT_COLOURS) == layout.JOINTS_PER_ARM

ESTOP_BUTTON = f"""
QPushButton {{
    background-color: {ESTOP_RED}; color: white; font-weight: bold; font-size: 20px;
    border: 3px solid {ESTOP_RED_DOWN}; border-radius: 8px; padding: 8px 24px;
}}
QPushButton:pressed {{ background-color: {ESTOP_RED_DOWN}; }}
QPushButton:disabled {{ background-color: #9e9e9e; border-color: #616161; }}
"""


def badge(colour: str) -> str:
    """Style sheet for a small coloured status label."""
    return (f"QLabel {{ background-color: {colour}; color: white; font-weight: bold; "
            f"border-radius: 4px; padding: 2px 8px; }}")
