"""``dicom-node token create NAME | list | revoke NAME``: API tokens of the operator console.

``create`` prints the new token alone on its last line (so ``| tail -n 1`` captures it); it is
shown only then, since the ledger keeps only its SHA-256. ``revoke`` also ends the browser
sessions opened with the token. Works whether the node runs or not (the ledger is shared).
"""
from __future__ import annotations

import argparse
import time

from dicom_node.config import Config
from dicom_node.names import LEDGER_FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("create", "list", "revoke"),
                        help="create: make a token for NAME and print it (once); list: name, created, last used, "
                             "revoked; revoke: revoke NAME's token and end its browser sessions")
    parser.add_argument("name", nargs="?", help="who or what uses the token, e.g. alice or prometheus "
                                                "(1-64 of A-Z a-z 0-9 ._@-)")


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def run(args: argparse.Namespace, cfg: Config) -> int:
    from dicom_node.console.auth import create_token, list_tokens, revoke_token
    from dicom_node.ledger import Ledger

    if args.action != "list" and not args.name:
        print(f"dicom-node token {args.action}: NAME is required")
        return 2
    ledger = Ledger(cfg.data_dir / LEDGER_FILE)
    try:
        if args.action == "create":
            try:
                token = create_token(ledger, args.name)
            except ValueError as exc:
                print(f"dicom-node token: {exc}")
                return 2
            print(f"token for {args.name!r} (shown only now; the node keeps only its hash):")
            print(token)
        elif args.action == "list":
            tokens = list_tokens(ledger)
            if not tokens:
                print("no tokens; make one with: dicom-node token create NAME")
            for t in tokens:
                state = f"revoked {_when(t.revoked_at)}" if t.revoked_at else "active"
                print(f"{t.name}\tcreated {_when(t.created_at)}\tlast used {_when(t.last_used_at)}\t{state}")
        else:
            if not revoke_token(ledger, args.name):
                print(f"dicom-node token: no active token named {args.name!r}")
                return 1
            print(f"revoked {args.name!r}; its browser sessions ended")
    finally:
        ledger.close()
    return 0
