"""dpo_lab's Optuna sweeper for Hydra (``hydra/sweeper=dpo_lab_optuna``, dpo_lab's preset
``hydra/sweeper=dpo_optuna``): see optuna_sweeper.py."""
