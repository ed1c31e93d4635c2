"""The simulated arm fleet: Gymnasium's MuJoCo Reacher-v5 (a two-joint planar arm) reaching and sweeping.

Public entry points: `simulate_fleet` (fleet.py), `rollout`, `reference_progress` (rollout.py),
`operator_policy` (operators.py), `SKILLS`, `STATE_LAYOUT`, `progress` (skills.py).
"""
