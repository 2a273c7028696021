"""Benchmark of document reading, per input format, from local disk and from a GCS API.

``python -m bench.read [--docs 5000]`` writes the real E3C notes of ``../shared`` (es,
en, it mixed) as a ``.txt`` folder, JSONL, JSONL.gz, JSONL.zst and Parquet, reads each back
through the pipeline's readers (list, split, read; no Beam runner overhead), first from local
disk and then from ``gcp-storage-emulator`` on localhost through gcsfs, and prints documents/s
and MB/s (of UTF-8 text) for each.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from bench.language import LANGS, load
from transforms.read import Fields, plan_reads, read_task, split_task
from transforms.io.shards import list_files


def write_formats(records: list[dict], root: Path) -> dict[str, str]:
    """The same records in every input format; returns format -> input pattern."""
    (root / "txt").mkdir(parents=True)
    for r in records:
        (root / "txt" / f"{r['id']}.txt").write_bytes(r["text"].encode("utf-8"))
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    (root / "docs.jsonl").write_bytes(body)
    (root / "docs.jsonl.gz").write_bytes(gzip.compress(body))
    (root / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    pq.write_table(pa.Table.from_pylist(records), root / "docs.parquet", row_group_size=1000)
    return {"txt": "txt", "jsonl": "docs.jsonl", "jsonl.gz": "docs.jsonl.gz",
            "jsonl.zst": "docs.jsonl.zst", "parquet": "docs.parquet"}


def read_all(pattern: str) -> tuple[int, int, float]:
    """(documents, UTF-8 bytes of text, seconds) to list, split and read everything."""
    t = time.perf_counter()
    n = size = 0
    for planned in plan_reads(list_files(pattern)):
        for task in split_task(planned):
            for doc in read_task(task, Fields()):
                n += 1
                size += len(doc.text.encode("utf-8")) if doc.text else 0
    return n, size, time.perf_counter() - t


def figures(n: int, size: int, seconds: float) -> dict:
    return {"docs": n, "docs_per_s": round(n / seconds), "MB_per_s": round(size / seconds / 1e6, 1)}


def main() -> None:
    """Print the benchmark's figures as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=5000, help="Documents per format.")
    args = ap.parse_args()
    per_lang = args.docs // len(LANGS) + 1
    records = [{"id": f"{lang}-{i}", "text": t, "lang": lang}
               for lang in LANGS for i, t in enumerate(load(lang)[:per_lang])][: args.docs]
    report: dict = {"local": {}, "gcs_emulator": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        patterns = write_formats(records, root)
        for fmt, rel in patterns.items():
            report["local"][fmt] = figures(*read_all(str(root / rel)))
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        emulator = subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
             "--port", str(port), "--in-memory"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
            time.sleep(2)
            import gcsfs

            fs = gcsfs.GCSFileSystem(token="anon", project="bench")
            fs.mkdir("bench")
            fs.put(str(root) + "/", "bench/in/", recursive=True)
            for fmt, rel in patterns.items():
                report["gcs_emulator"][fmt] = figures(*read_all(f"gs://bench/in/{rel}"))
        finally:
            emulator.terminate()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
