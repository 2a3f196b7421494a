"""Contextual environments: context spaces, wrappers, registration, GPU (Warp) envs."""
