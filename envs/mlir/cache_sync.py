"""Copy the time cache to or from durable storage: the Parquet files the other side lacks.

On a cluster the cache lives on the head's disk, which `ray down` deletes. cluster.yaml pulls
it from storage before the head starts Ray and pushes it back every 10 minutes; push once more
before `ray down` (docs/CLUSTER.md). The cache's files are never rewritten (each is a new file,
renamed into place), so copying the names the other side lacks is a complete sync; files that
compaction merged away locally stay in storage, where a record read twice is the same record.

    python -m envs.mlir.cache_sync pull                # storage -> the cache folder
    python -m envs.mlir.cache_sync push                # the cache folder -> storage
    python -m envs.mlir.cache_sync push --every 600    # again every 10 minutes (one loop at a time)

Storage: --store URI (s3://bucket/prefix, any URI pyarrow opens, or a folder), else
$MLIR_RL_STORE/times. The cache folder: --cache-dir, else $MLIR_RL_CACHE, else
~/.cache/mlir_rl/times.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Tuple

import pyarrow.fs as pafs

PLACEHOLDER = "YOUR-BUCKET"


def _open(where: str) -> Tuple[pafs.FileSystem, str]:
    if "://" not in where:
        where = os.path.abspath(os.path.expanduser(where))
    return pafs.FileSystem.from_uri(where)


def _names(fs: pafs.FileSystem, path: str):
    sel = pafs.FileSelector(path, allow_not_found=True)
    return {os.path.basename(i.path) for i in fs.get_file_info(sel)
            if i.type == pafs.FileType.File and i.path.endswith(".parquet")}


def sync(source: str, destination: str) -> int:
    """Copy the .parquet files of `source` that `destination` lacks; returns how many. Into a
    local folder each file arrives under a temporary name and is renamed: the cache never
    reads half a file."""
    sfs, spath = _open(source)
    dfs, dpath = _open(destination)
    dfs.create_dir(dpath, recursive=True)
    missing = sorted(_names(sfs, spath) - _names(dfs, dpath))
    local = isinstance(dfs, pafs.LocalFileSystem)
    for name in missing:
        target = f"{dpath}/{name}"
        pafs.copy_files(f"{spath}/{name}", target + ".tmp" if local else target,
                        source_filesystem=sfs, destination_filesystem=dfs)
        if local:
            dfs.move(target + ".tmp", target)
    return len(missing)


def main(argv=None) -> int:
    from envs.mlir.cache import default_cache_dir
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("direction", choices=("pull", "push"))
    ap.add_argument("--store", help="storage URI (default $MLIR_RL_STORE/times)")
    ap.add_argument("--cache-dir", default=default_cache_dir())
    ap.add_argument("--every", type=float, help="repeat every SECONDS (push; one such loop per cache folder)")
    args = ap.parse_args(argv)
    store = args.store or (os.environ["MLIR_RL_STORE"].rstrip("/") + "/times" if os.environ.get("MLIR_RL_STORE")
                           else None)
    if not store or PLACEHOLDER in store:
        print(f"cache_sync: no storage set ({store or 'MLIR_RL_STORE unset'}): the time cache stays on this "
              "node only (set MLIR_RL_STORE, cluster.yaml docker.run_options)", file=sys.stderr)
        return 0
    src, dst = (store, args.cache_dir) if args.direction == "pull" else (args.cache_dir, store)
    if args.every:
        import fcntl
        os.makedirs(args.cache_dir, exist_ok=True)
        lock = open(os.path.join(args.cache_dir, ".sync.lock"), "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"cache_sync: a loop already runs for {args.cache_dir}")
            return 0
    while True:
        try:
            n = sync(src, dst)
            print(f"cache_sync {args.direction}: {n} file(s) {src} -> {dst}", flush=True)
        except (OSError, ValueError) as e:  # pyarrow's errors derive from these
            print(f"cache_sync {args.direction} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            if not args.every:
                return 1
        if not args.every:
            return 0
        time.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
