"""Which training checkpoint a resume uses (``backend/ckpt/checkpoint.py``: verify / candidates / resolve), on
checkpoint
folders laid out on disk as ``save`` writes them: the newest one that is complete, with a one-line warning for
each newer one that is not (truncated shard, missing shard, corrupt bytes, garbled ``latest``)."""
import json
import os
import zlib

from megatron_meml.backend.ckpt import checkpoint as C


def _write(root, step, payloads=(b"rank zero bytes" * 10, b"rank one bytes" * 10)):
    d = os.path.join(root, f"step_{step:08d}")
    os.makedirs(d)
    files = [f"rank_{r:05d}.pt" for r in range(len(payloads))]
    for name, data in zip(files, payloads):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    meta = {"format": C.FORMAT, "step": step, "world_size": len(files), "tp": 1, "pp": 1, "files": files,
            "file_info": {n: {"size": len(p), "crc32": zlib.crc32(p)} for n, p in zip(files, payloads)}}
    json.dump(meta, open(os.path.join(d, "meta.json"), "w"))
    with open(os.path.join(root, "latest"), "w") as f:
        f.write(os.path.basename(d))
    return d


def _resolve(root, crc=False):
    warnings = []
    path = C.resolve(root, checksum_files=(lambda meta: meta["files"]) if crc else (lambda meta: []),
                     warn=warnings.append)
    return path, warnings


def test_newest_complete_checkpoint_is_used_silently(tmp_path):
    old, new = _write(str(tmp_path), 1), _write(str(tmp_path), 2)
    assert C.verify(old) is None and C.verify(new, ["rank_00000.pt"]) is None
    assert _resolve(str(tmp_path), crc=True) == (new, [])


def test_truncated_shard_falls_back_with_one_warning(tmp_path):
    old, new = _write(str(tmp_path), 1), _write(str(tmp_path), 2)
    with open(os.path.join(new, "rank_00001.pt"), "r+b") as f:
        f.truncate(7)
    path, warnings = _resolve(str(tmp_path))
    assert path == old and len(warnings) == 1
    assert "step_00000002" in warnings[0] and "rank_00001.pt: 7 bytes" in warnings[0] and "falling back to" in warnings[0]


def test_missing_shard_falls_back(tmp_path):
    old, new = _write(str(tmp_path), 1), _write(str(tmp_path), 2)
    os.remove(os.path.join(new, "rank_00000.pt"))
    path, warnings = _resolve(str(tmp_path))
    assert path == old and "rank_00000.pt: missing" in warnings[0]


def test_corrupt_bytes_are_caught_by_the_crc_only(tmp_path):
    old, new = _write(str(tmp_path), 1), _write(str(tmp_path), 2)
    with open(os.path.join(new, "rank_00000.pt"), "r+b") as f:  # same size, one byte flipped
        f.seek(3)
        f.write(b"X")
    assert _resolve(str(tmp_path)) == (new, [])  # sizes alone cannot see it
    path, warnings = _resolve(str(tmp_path), crc=True)
    assert path == old and "CRC-32 differs" in warnings[0]


def test_garbled_latest_pointer(tmp_path):
    _write(str(tmp_path), 1)
    new = _write(str(tmp_path), 2)
    with open(os.path.join(tmp_path, "latest"), "wb") as f:
        f.write(b"\x00\xffgarbage")
    path, warnings = _resolve(str(tmp_path))
    assert path == new and len(warnings) == 1 and "does not name a checkpoint folder" in warnings[0]


def test_latest_naming_a_deleted_folder_and_a_newer_unpointed_one(tmp_path):
    old = _write(str(tmp_path), 1)
    with open(os.path.join(tmp_path, "latest"), "w") as f:
        f.write("step_00000009")  # pruned or never renamed
    assert _resolve(str(tmp_path))[0] == old
    new = _write(str(tmp_path), 2)
    with open(os.path.join(tmp_path, "latest"), "w") as f:
        f.write("step_00000001")  # crash between the folder rename and the `latest` update
    assert C.candidates(str(tmp_path))[0] == new and _resolve(str(tmp_path)) == (new, [])


def test_nothing_usable(tmp_path):
    assert _resolve(str(tmp_path / "absent")) == (None, [])
    new = _write(str(tmp_path), 1)
    os.remove(os.path.join(new, "meta.json"))  # an interrupted save never has meta.json
    assert _resolve(str(tmp_path)) == (None, [])
    bad = _write(str(tmp_path), 2)
    os.remove(os.path.join(bad, "rank_00001.pt"))
    path, warnings = _resolve(str(tmp_path))
    assert path is None and "starting fresh" in warnings[0]


def test_prune_ignores_folders_set_aside(tmp_path):
    for s in (1, 2, 3):
        _write(str(tmp_path), s)
    os.replace(os.path.join(tmp_path, "step_00000003"), os.path.join(tmp_path, "step_00000003.unusable"))
    os.makedirs(os.path.join(tmp_path, "step_00000004.tmp"))
    C._prune(str(tmp_path), keep_last=1)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_00000002", "step_00000003.unusable"]
