"""Tests of pipeline.tracking.provenance_tags: input hashes and reproducibility tags."""

from __future__ import annotations

import subprocess

from pipeline.tracking import file_md5, input_hash_tags, reproducibility_tags


def test_hashes_of_files_and_directories(monkeypatch, tmp_path):
    data = tmp_path / "data" / "prepared"
    (data / "sub").mkdir(parents=True)
    (data / "a.bin").write_bytes(b"a")
    (data / "sub" / "b.bin").write_bytes(b"b")
    before = file_md5(data)
    assert file_md5(data / "a.bin") == "0cc175b9c0f1b6a831c399e269772661"
    (data / "sub" / "b.bin").write_bytes(b"changed")
    assert file_md5(data) != before

    monkeypatch.chdir(tmp_path)
    tags = input_hash_tags(["data/prepared"])
    assert tags == {"input.data/prepared": file_md5(data)}


def test_reproducibility_tags(tmp_path):
    tags = reproducibility_tags(tmp_path)
    assert tags["git.commit"] == "unknown"
    assert tags["device"]
    assert tags["version.python"].count(".") == 2

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "code.py").write_text("x = 1")
    (tmp_path / "params.yaml").write_text("seed: 0")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    tags = reproducibility_tags(tmp_path)
    assert len(tags["git.commit"]) == 40
    assert tags["git.dirty"] == "false"
    # parameters and DVC outputs change in every experiment: not "dirty" code
    (tmp_path / "params.yaml").write_text("seed: 1")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'")
    assert reproducibility_tags(tmp_path)["git.dirty"] == "false"
    (tmp_path / "pipeline" / "code.py").write_text("x = 2")
    assert reproducibility_tags(tmp_path)["git.dirty"] == "true"
