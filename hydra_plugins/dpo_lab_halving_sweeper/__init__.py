"""dpo_lab's synchronous successive-halving sweeper for Hydra (``hydra/sweeper=dpo_lab_halving``): see
halving_sweeper.py."""
