"""An embedded S3-compatible endpoint on 127.0.0.1 for the demo and the tests.

moto's standalone server (what s3fs's own test suite uses) runs as a child process on a free
port; `LocalS3` starts it, waits until it answers, exports the endpoint and dummy credentials
into the AWS chain (see storage.py) and, on exit, stops exactly that process and restores the
environment. Nothing else is ever contacted.

    with LocalS3() as s3:
        s3.create_bucket("agejobs")
        ...  # s3://agejobs/... now works in this process and in the local Ray workers it starts
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from agejobs.processes import stop_child

HOST = "127.0.0.1"
# moto accepts any credentials; these are placeholders, not secrets.
DUMMY_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "agejobs-local",
    "AWS_SECRET_ACCESS_KEY": "agejobs-local",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class LocalS3:
    """A moto S3 server child process on 127.0.0.1:<free port>."""

    def __init__(self, port: int | None = None, start_timeout_s: float = 30.0, export_environment: bool = True):
        self.port = port or free_port()
        self.endpoint_url = f"http://{HOST}:{self.port}"
        self.start_timeout_s = start_timeout_s
        self.export_environment = export_environment
        self.process: subprocess.Popen | None = None
        self._saved_environment: dict[str, str | None] = {}

    def environment(self) -> dict[str, str]:
        return {**DUMMY_ENVIRONMENT, "AWS_ENDPOINT_URL": self.endpoint_url}

    def start(self) -> LocalS3:
        try:
            import moto.server  # noqa: F401
        except ImportError as error:
            raise RuntimeError(
                "the embedded S3 endpoint needs moto's server: pip install 'agejobs[local-s3]'"
            ) from error
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"moto S3 server exited with code {self.process.returncode} on port {self.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"moto S3 server did not answer on {self.endpoint_url} in {self.start_timeout_s:.0f} s"
                )
            time.sleep(0.1)
        if self.export_environment:
            for name, value in self.environment().items():
                self._saved_environment[name] = os.environ.get(name)
                os.environ[name] = value
            self._reset_filesystems()
        return self

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    @staticmethod
    def _reset_filesystems() -> None:
        from agejobs import storage

        storage.reset_filesystems()

    def create_bucket(self, bucket: str) -> None:
        from agejobs import storage

        fs, _ = storage.filesystem_for(f"s3://{bucket}")
        fs.mkdir(bucket)

    def stop(self) -> None:
        """Stop the server this object started (by its pid) and restore the environment."""
        stop_child(self.process, grace_s=10)
        self.process = None
        for name, value in self._saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_environment.clear()
        self._reset_filesystems()

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
