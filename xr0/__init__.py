"""Xiaomi-Robotics-0: the vision-language-action policy, its training and its async runtime.

No Qt, no drivers (enforced by import-linter).
"""
