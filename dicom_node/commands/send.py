"""``dicom-node send PATH... --to DEST``: C-STORE DICOM files (folders are recursed)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.uid import MediaStorageDirectoryStorage

from dicom_node.config import Config, ConfigError
from dicom_node.scu import DeliveryError, InstanceResult, iter_dicom_files, parse_destination, read_for_sending, \
    send_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or folders (recursed)")
    parser.add_argument("--to", required=True, metavar="DEST", dest="destination",
                        help="a name under destinations: in the configuration, or AE@host:port")
    parser.add_argument("--calling-ae", metavar="AE", help="our AE title (default: node.ae_title)")
    parser.add_argument("--transfer-syntax", metavar="UID",
                        help="native syntax to offer besides each file's own (default: the destination's)")
    parser.add_argument("--timeout", type=float, metavar="S", help="seconds to wait for the peer")


def _report(results: list[InstanceResult]) -> int:
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"  FAILED {r.path or r.sop_instance_uid}: {r.error or 'no status'}", file=sys.stderr)
    return len(failed)


def run(args: argparse.Namespace, cfg: Config) -> int:
    try:
        dest = parse_destination(args.destination, cfg.destinations)
    except ConfigError as exc:
        print(f"dicom-node send: {exc}", file=sys.stderr)
        return 2
    # A file named on the command line must be sent; non-DICOM files met while recursing a
    # folder (README, thumbnails, DICOMDIR) are listed and skipped.
    named = {Path(p) for p in args.paths if not Path(p).is_dir()}
    paths, unreadable, skipped = [], 0, 0
    for path in iter_dicom_files(args.paths):
        try:
            ds = read_for_sending(path, header_only=True)
            if ds.SOPClassUID == MediaStorageDirectoryStorage and path not in named:
                raise InvalidDicomError("a DICOMDIR index, not an instance")
            paths.append(path)
        except (InvalidDicomError, OSError, ValueError) as exc:
            if path in named:
                print(f"  FAILED {path}: not a readable DICOM file ({exc})", file=sys.stderr)
                unreadable += 1
            else:
                print(f"  skipped {path}: not a DICOM instance ({exc})", file=sys.stderr)
                skipped += 1
    if not paths:
        print("dicom-node send: no DICOM files to send", file=sys.stderr)
        return 2
    try:
        results = send_files(paths, dest, args.calling_ae or cfg.node.ae_title,
                             args.transfer_syntax or dest.transfer_syntax, args.timeout or dest.timeout_s)
    except DeliveryError as exc:
        sent = sum(r.ok for r in exc.results)
        print(f"C-STORE to {dest.name}: FAILED: {exc} ({sent} of {len(paths)} stored before that)",
              file=sys.stderr)
        return 1
    failed = _report(results)
    print(f"C-STORE to {dest.name}: {len(results) - failed} of {len(results)} stored"
          + (f", {failed} failed" if failed else "") + (f", {unreadable} unreadable" if unreadable else "")
          + (f", {skipped} non-DICOM files skipped" if skipped else ""))
    return 1 if failed or unreadable else 0
