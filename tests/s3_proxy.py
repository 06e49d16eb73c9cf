"""A tiny HTTP proxy in front of the local S3 endpoint that can answer 503 SlowDown to the
first N requests: how the tests see botocore's retries from the outside."""

from __future__ import annotations

import http.client
import http.server
import threading
from urllib.parse import urlsplit

SLOW_DOWN = (
    b"<?xml version='1.0' encoding='UTF-8'?>"
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)


class FlakyProxy:
    def __init__(self, upstream_url: str, fail_first: int = 0):
        self.upstream = urlsplit(upstream_url)
        self.fail_first = fail_first
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status sent)
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    failing = len(proxy.requests) < proxy.fail_first
                if failing:
                    status, headers, payload = 503, {"Content-Type": "application/xml"}, SLOW_DOWN
                else:
                    connection = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                    forwarded = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    forwarded["Host"] = proxy.upstream.netloc
                    connection.request(self.command, self.path, body=body, headers=forwarded)
                    response = connection.getresponse()
                    status, payload = response.status, response.read()
                    dropped = ("transfer-encoding", "connection") + (
                        () if self.command == "HEAD" else ("content-length",)
                    )
                    headers = {k: v for k, v in response.getheaders() if k.lower() not in dropped}
                    connection.close()
                with proxy.lock:
                    proxy.requests.append((self.command, self.path, status))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if "Content-Length" not in headers and "content-length" not in headers:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()
