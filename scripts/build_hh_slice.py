"""Build dpo_lab/assets/hh_rlhf/: a slice of Anthropic's HH-RLHF harmless-base test split, shipped in the
package so that `data=hh_rlhf`, the SmolLM2 experiment and the tests need nothing beside the repository.

    python scripts/build_hh_slice.py /path/to/hh-rlhf-harmless-base-test.jsonl.gz [--rows 1200]

The source is the `test.jsonl.gz` of the `harmless-base` folder of https://huggingface.co/datasets/Anthropic/hh-rlhf
(MIT licence, Copyright (c) 2022 Anthropic). The slice is its first N lines, unchanged, gzipped with a fixed
timestamp (the same input gives the same bytes); the source's and the slice's sha256 go into SOURCE.json.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "dpo_lab" / "assets" / "hh_rlhf"
NAME = "harmless-base-test.jsonl.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--license", type=Path, default=None, help="the licence file beside the source")
    args = parser.parse_args()
    with gzip.open(args.source, "rt", encoding="utf-8") as f:
        lines = f.readlines()
    kept = lines[: args.rows]
    for number, line in enumerate(kept, 1):
        try:
            json.loads(line)  # every kept line is one JSON row
        except json.JSONDecodeError as err:
            raise SystemExit(f"{args.source} line {number}: not a JSON row ({err.msg})") from None
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as out:
        out.write("".join(kept).encode("utf-8"))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / NAME).write_bytes(buffer.getvalue())
    licence = args.license or args.source.with_name("hh-rlhf-LICENSE")
    if licence.is_file():
        shutil.copyfile(licence, OUT / "LICENSE")
    source = {
        "dataset": "Anthropic/hh-rlhf",
        "subset": "harmless-base",
        "split": "test",
        "licence": "MIT, Copyright (c) 2022 Anthropic (LICENSE beside this file)",
        "source_rows": len(lines),
        "rows": len(kept),
        "kept": f"the first {len(kept)} lines, unchanged",
        "source_sha256": hashlib.sha256(args.source.read_bytes()).hexdigest(),
        "slice_sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
        "built_by": "python scripts/build_hh_slice.py <source> --rows " + str(args.rows),
    }
    (OUT / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
    print(f"{OUT / NAME}: {len(kept)} of {len(lines)} rows, {len(buffer.getvalue())} bytes")


if __name__ == "__main__":
    main()
