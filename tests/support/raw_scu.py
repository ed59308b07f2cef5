"""A C-STORE client that sends a file's data set bytes exactly as they are.

dcmtk's storescu re-encodes and validates what it sends; hostile-input tests need
the bytes untouched (truncated, lying lengths, File Meta inside the data set, a
deflate bomb). Runs as its own process, since it sets pynetdicom's chunked-send
option (a module global) in its entry point:

    python -m tests.support.raw_scu PORT FILE... [--cut-after BYTES] [--calling AE]
        [--repeat N]

The presentation context is the file's SOP class and transfer syntax (its meta).

Prints one line per C-STORE: ``status 0x0000`` (or ``status none`` when no answer
came). ``--cut-after``: close the TCP connection once that many data set bytes are
on the wire (an association lost mid-data-set); exits 3.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config, evt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("files", type=Path, nargs="+", help="sent in order, one association")
    p.add_argument("--cut-after", type=int, default=0)
    p.add_argument("--calling", default="RAWSCU")
    p.add_argument("--called", default="DICOM-NODE")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--huge-pdu", action="store_true",
                   help="after associating, announce a 2 GiB P-DATA-TF PDU and wait for the"
                   " peer to close the connection (an A-ABORT may come first);"
                   " prints 'closed' or 'open'")  # fmt: skip
    args = p.parse_args(argv)
    # Send the file's data set bytes as they are, without decoding them.
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=args.calling)
    contexts = set()
    for path in args.files:
        meta = read_file_meta_info(path)
        contexts.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    for sop_class, syntax in sorted(contexts):
        ae.add_requested_context(sop_class, [syntax])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    sent = [0]

    def on_sent(event: object) -> None:
        pdu = event.pdu  # type: ignore[attr-defined]
        for item in getattr(pdu, "presentation_data_value_items", []):
            if not item.presentation_data_value[0] & 1:
                sent[0] += len(item.presentation_data_value) - 1
        if args.cut_after and sent[0] >= args.cut_after:
            sock = event.assoc.dul.socket.socket  # type: ignore[attr-defined]
            sock.close()
            print("cut", flush=True)
            os._exit(3)

    assoc = ae.associate(
        "127.0.0.1", args.port, ae_title=args.called, evt_handlers=[(evt.EVT_PDU_SENT, on_sent)]
    )
    if not assoc.is_established:
        print("association failed", flush=True)
        return 2
    if args.huge_pdu:
        sock = assoc.dul.socket.socket  # type: ignore[union-attr]
        assoc.dul.socket.select_timeout = 30  # type: ignore[union-attr]
        sock.sendall(struct.pack(">BBL", 0x04, 0, 2**31) + b"\0" * 1000)
        sock.settimeout(30)
        closed = False
        try:  # an A-ABORT may come first; then the connection must close
            while not closed:
                closed = not sock.recv(1024)
        except TimeoutError:
            pass
        except OSError:  # reset by the peer
            closed = True
        print("closed" if closed else "open", flush=True)
        os._exit(0)
    for path in [f for _ in range(args.repeat) for f in args.files]:
        status = assoc.send_c_store(path)
        code = status.get("Status") if status else None
        print("status none" if code is None else f"status 0x{int(code):04X}", flush=True)
    assoc.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
