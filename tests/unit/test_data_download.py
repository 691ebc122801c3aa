"""``emprl data download`` against a loopback HTTP server built from shared data (never the real URLs)."""

from __future__ import annotations

import socket
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from loopback import QuietHandler, serve_folder

from pipeline.config import DataConfig
from pipeline.data import (
    EPITOME_FILES,
    EPITOME_SHA256,
    DownloadError,
    download_all,
    download_ed,
    fetch,
    parse_ed_split,
    read_epitome,
    sha256_file,
)

# sha256 of the shared files, from shared/data/empatheticdialogues/README.md
SHARED_ED_SHA256 = {
    "train.csv": "c664bacbb30732302f23f93028cad50085bfb963fed85727cbd81e7d6c864a1a",
    "valid.csv": "827f5a994c9e5c66c9b0ba38a06b2a82618dd9e891133b9c30b1441b59f6db63",
}


class Handler(QuietHandler):
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Handler.requests.append(self.path)
        super().do_GET()


@pytest.fixture(scope="module")
def mirror(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A loopback server with ``empatheticdialogues.tar.gz`` (train+valid) and the EPITOME CSVs."""
    root = tmp_path_factory.mktemp("mirror")
    with tarfile.open(root / "empatheticdialogues.tar.gz", "w:gz", compresslevel=1) as tar:
        for split in ("train", "valid"):
            tar.add(shared_data / "empatheticdialogues" / f"{split}.csv", f"empatheticdialogues/{split}.csv")
    (root / "dataset").mkdir()
    for name in EPITOME_FILES.values():
        (root / "dataset" / name).write_bytes((shared_data / "epitome" / name).read_bytes())
    (root / "broken.tar.gz").write_bytes(b"not a tarball")
    with tarfile.open(root / "novalid.tar.gz", "w:gz") as tar:
        tar.add(shared_data / "epitome" / EPITOME_FILES["ER"], "empatheticdialogues/train.csv")
    with serve_folder(root, Handler) as base:
        yield {
            "base": base,
            "ed_url": f"{base}/empatheticdialogues.tar.gz",
            "ed_sha256": sha256_file(root / "empatheticdialogues.tar.gz"),
            "epitome_base_url": f"{base}/dataset/",
        }


def test_download_verify_extract_and_parse(mirror: dict[str, str], tmp_path: Path) -> None:
    paths = download_all(
        tmp_path,
        ed_url=mirror["ed_url"],
        ed_sha256=mirror["ed_sha256"],
        epitome_base_url=mirror["epitome_base_url"],
        timeout=5,
    )
    ed, epitome = paths["ed_path"], paths["epitome_path"]
    assert (ed, epitome) == (tmp_path / "empatheticdialogues", tmp_path / "epitome")
    # byte-identical to the shared files, so train parses to the 40,254 pairs checked in test_data_ed
    assert {n: sha256_file(ed / n) for n in SHARED_ED_SHA256} == SHARED_ED_SHA256
    assert not (ed / "test.csv").exists()
    assert len(parse_ed_split(ed / "valid.csv", DataConfig()).examples) == 5_738
    assert {n: sha256_file(epitome / n) for n in EPITOME_SHA256} == EPITOME_SHA256
    assert len(read_epitome(epitome).pairs) == 3_023
    assert not list(tmp_path.rglob("*.part"))


def test_files_with_the_right_checksum_are_not_fetched_again(mirror: dict[str, str], tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"ed_url": mirror["ed_url"], "ed_sha256": mirror["ed_sha256"]}
    download_all(tmp_path, epitome_base_url=mirror["epitome_base_url"], **kwargs)
    Handler.requests.clear()
    (tmp_path / "epitome" / EPITOME_FILES["IP"]).write_bytes(b"corrupted")
    download_all(tmp_path, epitome_base_url=mirror["epitome_base_url"], **kwargs)
    assert Handler.requests == [f"/dataset/{EPITOME_FILES['IP']}"]
    assert sha256_file(tmp_path / "epitome" / EPITOME_FILES["IP"]) == EPITOME_SHA256[EPITOME_FILES["IP"]]


def test_checksum_mismatch_names_file_and_digests_and_removes_the_file(
    mirror: dict[str, str], tmp_path: Path
) -> None:
    wrong = "0" * 64
    with pytest.raises(DownloadError) as info:
        download_ed(tmp_path, url=mirror["ed_url"], sha256=wrong)
    message = str(info.value)
    assert "empatheticdialogues.tar.gz" in message and wrong in message and mirror["ed_sha256"] in message
    assert list(tmp_path.iterdir()) == []


def test_several_accepted_checksums(mirror: dict[str, str], tmp_path: Path) -> None:
    accepted = ("f" * 64, mirror["ed_sha256"])
    assert download_ed(tmp_path, url=mirror["ed_url"], sha256=accepted).is_dir()


def test_no_network_fails_fast_with_manual_instructions(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(DownloadError, match=r"data\.source=local data\.ed_path=DIR data\.epitome_path=DIR"):
        download_ed(tmp_path, url=f"http://127.0.0.1:{port}/empatheticdialogues.tar.gz", timeout=2)
    assert time.perf_counter() - start < 2
    assert list(tmp_path.iterdir()) == []


def test_stalled_server_times_out(tmp_path: Path) -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.csv"
        start = time.perf_counter()
        with pytest.raises(DownloadError, match="cannot download"):
            fetch(url, tmp_path / "x.csv", sha256=None, timeout=0.3)
        assert time.perf_counter() - start < 3
    assert list(tmp_path.iterdir()) == []


def test_http_error_and_bad_tarballs(mirror: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(f"{mirror['base']}/missing.csv", tmp_path / "m.csv", sha256=None)
    with pytest.raises(DownloadError, match=r"not a readable \.tar\.gz"):
        download_ed(tmp_path / "a", url=f"{mirror['base']}/broken.tar.gz", sha256=None)
    with pytest.raises(DownloadError, match=r"has no member empatheticdialogues/valid\.csv"):
        download_ed(tmp_path / "b", url=f"{mirror['base']}/novalid.tar.gz", sha256=None)


def test_cli_download_prints_the_local_source_overrides(
    mirror: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.cli.data import main

    main(
        [
            "download",
            "--dest",
            str(tmp_path),
            "--ed-url",
            mirror["ed_url"],
            "--ed-sha256",
            mirror["ed_sha256"],
            "--epitome-base-url",
            mirror["epitome_base_url"],
        ]
    )
    out = capsys.readouterr().out.strip()
    assert out == (
        f"data.source=local data.ed_path={tmp_path / 'empatheticdialogues'} data.epitome_path={tmp_path / 'epitome'}"
    )
    assert sha256_file(tmp_path / "epitome" / EPITOME_FILES["ER"]) == EPITOME_SHA256[EPITOME_FILES["ER"]]


def test_cli_download_without_network_fails_fast_and_says_what_to_do(tmp_path: Path) -> None:
    from jobs.cli.data import main

    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(SystemExit, match=r"download failed: .*data\.ed_path") as info:
        main(
            [
                "download",
                "--dest",
                str(tmp_path),
                "--ed-url",
                f"http://127.0.0.1:{port}/ed.tar.gz",
                "--timeout",
                "3",
            ]
        )
    assert time.perf_counter() - t0 < 30, "an unreachable host must fail fast"
    assert "127.0.0.1" in str(info.value)
