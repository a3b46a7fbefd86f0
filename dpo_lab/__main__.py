"""``python -m dpo_lab [COMMAND] [args]``: the same as the ``dpo-lab`` console command."""

from dpo_lab.cli.main import main

main()
