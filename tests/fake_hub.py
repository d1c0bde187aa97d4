"""A small Hugging Face-compatible model hub on loopback, for download tests (``HF_ENDPOINT=<url>``).

It serves one repository the way ``huggingface_hub.snapshot_download`` asks for it: the repository's file list
(``GET /api/models/<repo>/revision/<rev>``), each file's metadata (``HEAD /<repo>/resolve/<rev>/<file>`` with the
commit and ETag headers) and its bytes (``GET``, honouring ``Range`` so that an interrupted download resumes). Files
are sent in pieces with a pause between them (``pause_s``), so a test can watch the bytes arrive, cancel midway and
resume. Every ``GET`` of a file is recorded with its ``Range`` header.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """``FakeHub("org/tiny", {"config.json": b"{}", "model.safetensors": b"..."}, pause_s=0.05)``; ``.url``."""

    def __init__(self, repo: str, files: dict[str, bytes], piece_bytes: int = 65536, pause_s: float = 0.0) -> None:
        self.repo, self.files, self.piece_bytes, self.pause_s = repo, files, piece_bytes, pause_s
        self.gets: list[tuple[str, str]] = []  # (file, Range header)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _file(self) -> str | None:
                prefix = f"/{owner.repo}/resolve/"
                if not self.path.startswith(prefix):
                    return None
                name = self.path[len(prefix):].split("?", 1)[0].split("/", 1)[-1]
                return name if name in owner.files else None

            def _headers(self, name: str, length: int, status: int = 200, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(length))
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(owner.files[name]).hexdigest()}"')
                self.send_header("Accept-Ranges", "bytes")
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()

            def do_HEAD(self) -> None:
                name = self._file()
                if name is None:
                    self._missing()
                    return
                self._headers(name, len(owner.files[name]))

            def do_GET(self) -> None:
                if self.path.startswith(f"/api/models/{owner.repo}/tree/"):  # the file list with sizes
                    body = json.dumps([{"type": "file", "path": name, "size": len(data),
                                        "oid": hashlib.sha1(data).hexdigest()}
                                       for name, data in owner.files.items()]).encode()
                    self._json(body)
                    return
                if self.path.startswith(f"/api/models/{owner.repo}"):  # the repository and its commit
                    body = json.dumps({"id": owner.repo, "modelId": owner.repo, "sha": COMMIT, "private": False,
                                       "siblings": [{"rfilename": name} for name in owner.files]}).encode()
                    self._json(body)
                    return
                name = self._file()
                if name is None:
                    self._missing()
                    return
                data = owner.files[name]
                wanted = self.headers.get("Range", "")
                owner.gets.append((name, wanted))
                start = int(wanted.split("=", 1)[1].split("-", 1)[0]) if wanted.startswith("bytes=") else 0
                if start:
                    self._headers(name, len(data) - start, 206,
                                  {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
                else:
                    self._headers(name, len(data))
                try:
                    for offset in range(start, len(data), owner.piece_bytes):
                        self.wfile.write(data[offset:offset + owner.piece_bytes])
                        self.wfile.flush()
                        time.sleep(owner.pause_s)
                except (BrokenPipeError, ConnectionResetError):  # the client was stopped: that is the test
                    pass

            def _json(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _missing(self) -> None:
                body = b'{"error": "Repository not found"}'
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Error-Code", "RepoNotFound")
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
