"""The simulated fleet, offline RL with a LoRA mixture of experts, and evaluation."""
