"""dpo_lab's packed launcher for Hydra (``hydra/launcher=packed``): see packed_launcher.py."""
