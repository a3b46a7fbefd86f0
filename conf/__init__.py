"""dpo_lab's shipped configs, installed as the package ``dpo_lab.conf`` and found by Hydra as
``pkg://dpo_lab.conf`` (pyproject.toml maps this folder there). Only YAML lives here."""
