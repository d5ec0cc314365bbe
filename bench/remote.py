"""Remote mirror costs against moto's S3 server on 127.0.0.1, each as a ratio against a
plain s3fs call on the same files to the same server, measured in the same run.

1. Upload of one SIZE checkpoint through RemoteMirror (enqueue -> result callback: local
   digests checked while uploading, sizes checked after, MANIFEST.json last, retention
   listing) vs `s3fs.put` of the same directory. Goal: throughput >= 0.9 of plain.
2. Restore (`restore_newest`: listing, manifest, download into staging, full digest
   verification, fsync of every file, atomic commit) vs `s3fs.get` of the same objects
   into a fresh directory (no verification, no fsync). Goal: >= 0.85 of plain.

Rounds alternate which of baseline and subject goes first; medians are reported. Nothing
leaves 127.0.0.1: the endpoint is the local server, the credentials are fake and set here,
and botocore is told not to ask the EC2 metadata service.

    .venv/bin/python bench/remote.py [--size-mib 256] [--rounds 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
)

from moto.server import ThreadedMotoServer

from stalwart.checkpoint import CheckpointStore
from stalwart.remote import (
    Remote,
    RemoteConfig,
    RemoteMirror,
    RestoreOutcome,
    UploadResult,
    restore_newest,
)

MIB = 1024 * 1024


def make_checkpoint(root: Path, size_bytes: int) -> Path:
    """A checkpoint shaped like a real one: weights, optimizer state, a small extra."""
    parts = {
        "model.safetensors": size_bytes // 2,
        "optim.pt": size_bytes * 3 // 8,
        "extra/rng_state.pt": size_bytes - size_bytes // 2 - size_bytes * 3 // 8,
    }
    store = CheckpointStore(root, run_id="bench")
    with store.begin(1000) as tx:
        for name, size in parts.items():
            with open(tx.path(name), "wb") as handle:
                for offset in range(0, size, 16 * MIB):
                    handle.write(os.urandom(min(16 * MIB, size - offset)))
    assert tx.committed is not None
    return tx.committed.path


class Bench:
    def __init__(self, endpoint_url: str, work: Path, checkpoint: Path) -> None:
        self.options: dict[str, Any] = {"client_kwargs": {"endpoint_url": endpoint_url}}
        self.work = work
        self.checkpoint = checkpoint
        self.bucket = f"bench-{uuid.uuid4().hex[:8]}"
        self.fs = Remote.open(f"s3://{self.bucket}", self.options).fs
        self.fs.mkdir(self.bucket)

    def config(self, prefix: str, **overrides: Any) -> RemoteConfig:
        return RemoteConfig(
            url=f"s3://{self.bucket}/{prefix}", storage_options=self.options, **overrides
        )

    def plain_put(self, prefix: str) -> None:
        self.fs.put(str(self.checkpoint), f"{self.bucket}/{prefix}/", recursive=True)

    def mirror_upload(self, prefix: str) -> None:
        config = self.config(prefix)
        done = threading.Event()
        results: list[UploadResult] = []

        def on_result(result: UploadResult) -> None:
            results.append(result)
            done.set()

        with RemoteMirror(Remote.from_config(config), config, on_result=on_result) as mirror:
            mirror.enqueue(self.checkpoint)
            if not done.wait(600):
                raise RuntimeError("the upload did not finish in 10 minutes")
        if not results[0].ok:
            raise RuntimeError(f"upload failed: {results[0]}")

    def plain_get(self, prefix: str) -> None:
        target = self.work / f"get-{prefix}"
        self.fs.get(f"{self.bucket}/{prefix}/{self.checkpoint.name}/", str(target), recursive=True)

    def restore(self, prefix: str) -> None:
        result = restore_newest(self.config(prefix), self.work / f"restore-{prefix}")
        if result.outcome is not RestoreOutcome.RESTORED:
            raise RuntimeError(result.message)

    def clean(self, prefix: str) -> None:
        self.fs.rm(f"{self.bucket}/{prefix}", recursive=True)
        for name in (f"get-{prefix}", f"restore-{prefix}"):
            shutil.rmtree(self.work / name, ignore_errors=True)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (local disk)")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    work = Path(tempfile.mkdtemp(prefix="stalwart-bench-remote-", dir=args.dir))
    try:
        host, port = server.get_host_and_port()
        assert host == "127.0.0.1"
        checkpoint = make_checkpoint(work / "local", args.size_mib * MIB)
        bench = Bench(f"http://127.0.0.1:{port}", work, checkpoint)
        size_bytes = sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file())
        put_s: list[float] = []
        mirror_s: list[float] = []
        get_s: list[float] = []
        restore_s: list[float] = []
        # Each side's client once (a process makes its botocore client once), moto's first
        # objects, the code paths: not timed.
        bench.plain_put("warmup-plain")
        bench.mirror_upload("warmup-mirror")
        bench.plain_get("warmup-plain")
        bench.restore("warmup-mirror")
        bench.clean("warmup-plain")
        bench.clean("warmup-mirror")
        for index in range(args.rounds):
            plain, subject = f"plain-{index}", f"mirror-{index}"
            upload_pairs = [
                (put_s, lambda p=plain: bench.plain_put(p)),
                (mirror_s, lambda s=subject: bench.mirror_upload(s)),
            ]
            download_pairs = [
                (get_s, lambda p=plain: bench.plain_get(p)),
                (restore_s, lambda s=subject: bench.restore(s)),
            ]
            if index % 2:
                upload_pairs.reverse()
                download_pairs.reverse()
            for sink, action in (*upload_pairs, *download_pairs):
                sink.append(timed(action))
            bench.clean(plain)
            bench.clean(subject)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        server.stop()

    def rate(seconds: list[float]) -> str:
        median = statistics.median(seconds)
        return f"{median:7.3f} s  {size_bytes / MIB / median:7.1f} MiB/s"

    print(f"checkpoint {size_bytes / MIB:.0f} MiB in 3 files + manifest, {args.rounds} rounds")
    print(f"plain s3fs.put           {rate(put_s)}")
    print(f"mirror upload            {rate(mirror_s)}")
    put_ratio = statistics.median(put_s) / statistics.median(mirror_s)
    print(f"  mirror/put throughput  {put_ratio:.2f}  (goal >= 0.9)")
    print(f"plain s3fs.get           {rate(get_s)}")
    print(f"restore (verify+commit)  {rate(restore_s)}")
    get_ratio = statistics.median(get_s) / statistics.median(restore_s)
    print(f"  restore/get throughput {get_ratio:.2f}  (goal >= 0.85)")


if __name__ == "__main__":
    main()
