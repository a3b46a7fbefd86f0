"""Speed and memory benchmarks of dpo_lab against a plain TRL script (``make bench``)."""
