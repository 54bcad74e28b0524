"""``python -m segmenter <command>``: dispatch to the ``main(argv)`` of each command."""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

#: Command name -> (module, function); imported lazily so ``--help`` does not load torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("segmenter.train", "main"),
    "evaluate": ("segmenter.evaluate", "main"),
    "predict": ("segmenter.inference", "main"),
    "make-phantoms": ("segmenter.synthetic", "main"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(f"usage: python -m segmenter {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    module, func = COMMANDS[args[0]]
    return int(getattr(importlib.import_module(module), func)(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
