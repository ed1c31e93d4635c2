"""Angles and orientations: the one implementation of each, for polars expressions and numpy arrays.

Yaw is the rotation about +z, counter-clockwise (left) positive, from a quaternion in
w, x, y, z order (ROS and MuJoCo both store x, y, z, w or w, x, y, z; mappings name the order).
"""
from __future__ import annotations

import math

import numpy as np
import polars as pl

TWO_PI = 2 * math.pi


def wrap_angle(expr: pl.Expr) -> pl.Expr:
    """Angle wrapped to [-pi, pi)."""
    return expr - TWO_PI * ((expr + math.pi) / TWO_PI).floor()


def yaw_from_quaternion(w: pl.Expr, x: pl.Expr, y: pl.Expr, z: pl.Expr) -> pl.Expr:
    """Yaw (rad) of a quaternion given as four expressions."""
    return pl.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def upright_cosine(x: pl.Expr, y: pl.Expr) -> pl.Expr:
    """Cosine of the angle between the body's z axis and the world's (1 upright, < 0 upside down)."""
    return 1.0 - 2.0 * (x * x + y * y)


def yaw_from_quaternion_np(q_wxyz: np.ndarray) -> np.ndarray:
    """Yaw (rad) of quaternions in w, x, y, z order; works on (..., 4)."""
    q = np.asarray(q_wxyz, dtype=np.float64)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
