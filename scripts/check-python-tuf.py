#!/usr/bin/env python3
"""Interop check: python-tuf's ngclient (the reference TUF client) reads an Outpost hub's static export.

Usage: scripts/check-python-tuf.py EXPORT_DIR TARGET_PATH
Needs `pip install tuf`. Serves EXPORT_DIR over HTTP on loopback, refreshes from 1.root.json, downloads the
target and checks it against its TUF hashes. Not part of CI (it needs Python); its result is recorded in README.md.
"""
import http.server
import pathlib
import sys
import tempfile
import threading

from tuf.ngclient import Updater

export, target = pathlib.Path(sys.argv[1]).resolve(), sys.argv[2]
handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(export), **kw)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
base = f"http://127.0.0.1:{server.server_address[1]}"
with tempfile.TemporaryDirectory() as tmp:
    meta, dl = pathlib.Path(tmp, "metadata"), pathlib.Path(tmp, "downloads")
    meta.mkdir(); dl.mkdir()
    root = (export / "metadata" / "1.root.json").read_bytes()
    u = Updater(metadata_dir=str(meta), metadata_base_url=f"{base}/metadata/",
                target_base_url=f"{base}/targets/", target_dir=str(dl), bootstrap=root)
    u.refresh()
    info = u.get_targetinfo(target)
    assert info is not None, f"{target} is not listed"
    path = u.download_target(info)
    print(f"python-tuf {__import__('tuf').__version__}: refreshed, found {target} "
          f"({info.length} bytes, custom outpost.risk_tier={info.custom['outpost']['risk_tier']}), "
          f"downloaded and verified {path}")
server.shutdown()
