"""The batched-ASR benchmark: clip cutting and its file, the batch plan, a real timed run on
tiny.en, the report, and that its request kinds are the server's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coach.settings import Settings
from scripts.bench_asr_batch import (
    KINDS,
    CallLoad,
    batch_plan,
    call_load,
    calls_per_model,
    cut_clips,
    load_clips,
    main,
    save_clips,
)


def test_request_kinds_are_the_servers() -> None:
    s = Settings()
    assert KINDS["final"] == {
        "beam_size": s.asr_beam_size,
        "words": True,
        "min_window_s": s.asr_min_window_s,
    }
    assert KINDS["partial"] == {
        "beam_size": s.asr_partial_beam_size,
        "words": False,
        "min_window_s": s.asr_partial_min_window_s,
    }


def test_batch_plan_draws_distinct_clips_and_is_seeded() -> None:
    plan = batch_plan(10, 4, 50, seed=3)
    assert len(plan) == 50
    assert all(len(set(b)) == 4 and all(0 <= i < 10 for i in b) for b in plan)
    assert plan == batch_plan(10, 4, 50, seed=3)
    assert plan != batch_plan(10, 4, 50, seed=4)
    assert all(len(b) == 3 for b in batch_plan(3, 8, 5, seed=0))  # capped at the clip count


@pytest.fixture(scope="module")
def eval_dir(
    billing_call: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The demo call laid out as `eval_cues render` lays out the evaluation set."""
    root = tmp_path_factory.mktemp("cue_eval")
    wav, truth = billing_call
    (root / "dev").mkdir()
    shutil.copy(wav, root / "dev" / "billing.wav")
    (root / "dev" / "billing.json").write_text(json.dumps(truth))
    return root


def test_clips_are_the_turns_on_their_own_channel_and_survive_the_file(
    eval_dir: Path, billing_call: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    turns = billing_call[1]["turns"]
    clips = cut_clips(eval_dir, ["dev"], limit=100)
    assert [c.text for c in clips] == [t["text"] for t in turns]
    assert [c.party for c in clips] == [t["speaker"] for t in turns]
    for c, t in zip(clips, turns, strict=True):
        assert c.seconds == pytest.approx(t["t_end"] - t["t_start"] + 0.5, abs=0.02)
        assert np.abs(c.audio).max() > 0.05  # the speaker's own channel, not the silent one
    path = tmp_path / "clips.npz"
    save_clips(clips, path)
    back = load_clips(path)
    assert [c.text for c in back] == [c.text for c in clips]
    for a, b in zip(back, clips, strict=True):
        assert len(a.audio) == len(b.audio)
        assert np.abs(a.audio - b.audio).max() < 1e-4  # 16-bit storage
    assert len(cut_clips(eval_dir, ["dev"], limit=3)) == 3


def test_a_timed_run_and_its_report(
    eval_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clips, out = tmp_path / "clips.npz", tmp_path / "run.json"
    assert (
        main(["prepare", "--eval-dir", str(eval_dir), "--splits", "dev", "--out", str(clips)]) == 0
    )
    args = ["run", "--clips", str(clips), "--model", "tiny.en", "--batches", "1,3"]
    args += [
        "--kinds",
        "final",
        "--seconds",
        "0",
        "--compute-type",
        "int8,nonsense",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    rep = json.loads(out.read_text())
    assert [c["compute_type"] for c in rep["configs"]] == ["int8"]
    assert rep["errors"][0]["compute_type"] == "nonsense"  # recorded, and int8 still ran
    rows = rep["configs"][0]["rows"]
    assert [(r["kind"], r["batch"], r["batches"]) for r in rows] == [
        ("final", 1, 3),
        ("final", 3, 3),
    ]
    assert all(r["utt_per_s"] > 0 and r["batch_p95_s"] >= r["batch_p50_s"] > 0 for r in rows)
    hyps = rep["configs"][0]["hypotheses"]
    assert set(hyps) == {"batch_1", "batch_3"}
    assert all(len(h) == rep["clips"]["n"] for h in hyps.values())
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    wer = float(printed.split("WER batch_1 ")[1].split(",")[0])
    assert 0.0 <= wer < 0.5  # tiny.en hears the demo call's synthetic voices mostly right
    assert "identical text batched vs alone" in printed
    assert "calls decoded" not in printed  # one kind only: no estimate


def test_report_of_a_run_with_one_batch_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--batches 1` saves one set of transcripts; the report compares it with itself."""
    rep = {
        "model": "base",
        "device": "cpu",
        "machine": {"gpu": None, "cpu_model": "test"},
        "clips": {"n": 2, "texts": ["I want my money back", "Thanks for calling"]},
        "configs": [
            {
                "compute_type": "float32",
                "rows": [],
                "hypotheses": {"batch_1": ["I want my money back", "thanks for coming"]},
            }
        ],
    }
    path = tmp_path / "one.json"
    path.write_text(json.dumps(rep))
    assert main(["report", str(path)]) == 0
    assert "WER batch_1 0.125; identical text batched vs alone: 2/2" in capsys.readouterr().out


def test_calls_per_model_adds_up_each_calls_decode_seconds() -> None:
    # A call with 0.2 finals and 0.8 speaking seconds per second asks for 0.2 finals and 1.6
    # partials a second: at 10 finals/s and 40 partials/s that is 0.02 + 0.04 model-seconds.
    load = CallLoad(finals_per_s=0.2, speaking_s_per_s=0.8)
    assert calls_per_model(10.0, 40.0, load) == pytest.approx(1 / 0.06)
    assert calls_per_model(10.0, 40.0, load, partial_interval_s=1.0) == pytest.approx(1 / 0.04)
    assert calls_per_model(20.0, 80.0, load) == pytest.approx(2 / 0.06)  # twice the speed


def test_call_load_comes_from_the_ground_truth(
    eval_dir: Path, billing_call: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    truth = billing_call[1]
    load = call_load(eval_dir, ["dev"])
    assert load is not None
    assert load.finals_per_s == pytest.approx(len(truth["turns"]) / truth["duration_s"])
    speech = sum(t["t_end"] - t["t_start"] for t in truth["turns"])
    assert load.speaking_s_per_s == pytest.approx(speech / truth["duration_s"])
    assert call_load(tmp_path, ["dev"]) is None  # nothing rendered: no estimate
