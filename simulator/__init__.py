"""The simulated Ant fleet: real MuJoCo physics, scripted operators, ROS 2 MCAP logs.

Public entry points: `simulate_fleet` (fleet.py), `rollout` and `operator_policy`
(rollout.py, operators.py), `SKILLS`, `progress`, `make_env` (skills.py).
"""
