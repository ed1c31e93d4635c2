"""Simulated fleets that write real ROS 2 logs: MuJoCo physics, scripted operators, ground truth beside.

Embodiments (simulator.embodiments: EMBODIMENTS, get_embodiment):
  ant  Ant-v5 quadruped: simulator.fleet, .rollout, .operators, .skills, .ant_log
  arm  Reacher-v5 two-joint arm: simulator.arm.fleet, .rollout, .operators, .skills, .log

Shared by both: driver.py (fleet generation, ground truth), layout.py (how a site records logs),
mcap_log.py (MCAP writing), faults.py (planted faults), control.py (the closed control loop),
operators.py (graded scripted operators, the hard ones as smooth as the expert), noise.py (optional
sensor noise, drift and stamp jitter), ros_msgs.py (ROS 2 message definitions).

    get_embodiment("ant").simulate_fleet(60, out, seed=3, operators="hard", noise="realistic")
"""
import os as _os

# Headless MuJoCo rendering (simulator.camera): EGL unless the environment chose a backend. Set before
# anything imports mujoco, which reads it once.
_os.environ.setdefault("MUJOCO_GL", "egl")
# Mesa's software rasteriser draws 64x64 frames in the calling thread: its worker threads only add contention,
# and a process forked while they exist can deadlock.
_os.environ.setdefault("LP_NUM_THREADS", "0")
