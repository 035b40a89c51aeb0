"""Draw the small real IMDB sample shipped in the package from the full aclImdb archive.

The sample keeps the archive's own layout (aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt) so
the pipeline reads it with exactly the code a user runs on the downloaded file.

    python scripts/make_sample.py ../shared/data/aclImdb_v1.tar.gz pipeline/sample/aclImdb_sample.tar.gz
"""

from __future__ import annotations

import argparse
import io
import random
import tarfile
from pathlib import Path


def draw_sample(archive: Path, out: Path, per_class: dict[str, int], seed: int) -> None:
    with tarfile.open(archive, "r:gz") as source:
        members = [m for m in source.getmembers() if m.isfile() and m.name.endswith(".txt")]
        by_group: dict[tuple[str, str], list[tarfile.TarInfo]] = {}
        for member in members:
            parts = member.name.split("/")
            if len(parts) == 4 and parts[2] in ("pos", "neg"):
                by_group.setdefault((parts[1], parts[2]), []).append(member)
        rng = random.Random(seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out, "w:gz") as sample:
            for (split, _label), group in sorted(by_group.items()):
                group.sort(key=lambda m: m.name)
                for member in rng.sample(group, per_class[split]):
                    payload = source.extractfile(member).read()
                    info = tarfile.TarInfo(member.name)
                    info.size = len(payload)
                    info.mtime = 0  # reproducible bytes for the same draw
                    sample.addfile(info, io.BytesIO(payload))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, help="the full aclImdb_v1.tar.gz")
    parser.add_argument("out", type=Path, help="where to write the sample .tar.gz")
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=500)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    per_class = {"train": args.train_per_class, "test": args.test_per_class}
    draw_sample(args.archive, args.out, per_class, args.seed)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
