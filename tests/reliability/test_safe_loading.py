"""Safe loading: no unsafe deserialisation in the package, and no secret from the environment ends up in a
run's record, store, config or logs."""

from __future__ import annotations

import re
from pathlib import Path

from pl_petune.cli import main

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for d in ("pl_petune", "callbacks") for p in (ROOT / d).rglob("*.py")]


def test_no_unsafe_deserialisation_in_the_package():
    offenders = []
    for path in SOURCES:
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\btorch\.load\(", code) and "weights_only=True" not in code:
                offenders.append(f"{path.name}:{lineno}: torch.load without weights_only=True")
            if re.search(r"\byaml\.(load|unsafe_load|full_load)\(", code) and "SafeLoader" not in code:
                offenders.append(f"{path.name}:{lineno}: yaml loader that is not safe")
            if re.search(r"\bpickle\.loads?\(", code):
                offenders.append(f"{path.name}:{lineno}: pickle.load")
    assert not offenders, offenders


def test_secrets_in_the_environment_stay_out_of_run_outputs(tmp_path, tiny_bert, data_dir, monkeypatch):
    secret = "sk-petune-test-0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    out = tmp_path / "out"
    assert main(["fit", "--config", str(ROOT / "recipes" / "quickstart.yaml"), "--model.init_args.backbone", tiny_bert,
                 "--data.data_dir", data_dir, "--data.train_limit", "32", "--data.max_length", "32",
                 "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
                 "--run.out_dir", str(out / "runs"), "--run.store", str(out / "s.sqlite")]) == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "record.json" for p in files) and any(p.name == "config.yaml" for p in files)
    for path in files:
        assert secret.encode() not in path.read_bytes(), f"secret leaked into {path}"
