"""Stage checkpoints live outside DVC's outputs, keyed by parameters and input content."""

from pathlib import Path

import stages.common as common
from pipeline.config import load_config

PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_key_follows_parameters_and_input_content(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "CHECKPOINT_DIR", tmp_path / "checkpoints")
    cfg = load_config(PROJECT_PARAMS)
    inputs = tmp_path / "prepared"
    inputs.mkdir()
    (inputs / "splits.safetensors").write_bytes(b"a" * 100)
    first = common.stage_checkpoints("finetune", cfg, [inputs])
    assert first.parent == tmp_path / "checkpoints" / "finetune"
    assert common.stage_checkpoints("finetune", cfg, [inputs]) == first

    (inputs / "splits.safetensors").write_bytes(b"b" * 100)  # other data, same size
    changed_data = common.stage_checkpoints("finetune", cfg, [inputs])
    other_cfg = cfg.model_copy(update={"seed": cfg.seed + 1})
    changed_params = common.stage_checkpoints("finetune", other_cfg, [inputs])
    assert len({first, changed_data, changed_params}) == 3


def test_clear_removes_only_that_stage(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "CHECKPOINT_DIR", tmp_path / "checkpoints")
    for stage in ("search", "finetune"):
        (tmp_path / "checkpoints" / stage / "key").mkdir(parents=True)
        (tmp_path / "checkpoints" / stage / "key" / "x.pt").write_bytes(b"state")
    common.clear_checkpoints("search")
    assert not (tmp_path / "checkpoints" / "search").exists()
    assert (tmp_path / "checkpoints" / "finetune" / "key" / "x.pt").is_file()
