"""CLI verbs of issue 6: generate, spikes, bench-decode (tiny models with a throwaway tokenizer)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import make_dense_and_student
from spikingmamba.cli.main import main
from spikingmamba.inference import read_spikes


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_dense_and_student(tmp_path_factory.mktemp("inference_cli"))


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_dense_and_spiking(folders, capsys):
    for name in ("dense", "student"):
        code, out, err = _run(capsys, "generate", folders / name, "--prompt", "The King", "--max-new-tokens", 8,
                              "--seed", 3, "--top-k", 20, "--top-p", 0.9, "--no-eos")
        assert code == 0 and out.strip() and "8 tokens" in err
    assert "engine deploy" in err and "spiking (integer)" in err


def test_generate_greedy_same_text_in_every_spiking_engine(folders, capsys):
    texts = set()
    for extra in (["--engine", "deploy"], ["--engine", "model"], ["--engine", "model", "--spike-mode", "binary"]):
        code, out, _ = _run(capsys, "generate", folders / "student", "--prompt", "MACBETH. So foul", "--temperature",
                            0, "--max-new-tokens", 12, "--no-eos", *extra)
        assert code == 0
        texts.add(out)
    assert len(texts) == 1 and len(texts.pop().strip()) > 0


@pytest.mark.parametrize("args, message", [
    (["--prompt", ""], "prompt is empty"),
    (["--prompt", "hello", "--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
    (["--prompt", "hello", "--top-p", "0"], "top_p must be > 0"),
    (["--prompt", "hello", "--top-p", "1.5"], "top_p must be <= 1"),
    (["--prompt", "hello", "--top-k", "-1"], "top_k must be >= 0"),
    (["--prompt", "the king of Scotland and his son", "--max-prompt-tokens", "3"], "more than the limit of 3"),
    (["--prompt", "hi", "--engine", "deploy", "--spike-mode", "binary"], "--engine model"),
])
def test_generate_bad_input_exits_2(folders, capsys, args, message):
    code, _, err = _run(capsys, "generate", folders / "student", *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_generate_bad_input_in_a_real_process(folders):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "spikingmamba.cli.main", "generate", str(folders / "dense"),
                           "--prompt", "hi", "--max-new-tokens", "0"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2
    assert "max_new_tokens must be >= 1" in proc.stderr and "Traceback" not in proc.stderr


def test_spikes_export(folders, capsys, tmp_path):
    out = tmp_path / "spikes.npz"
    code, stdout, _ = _run(capsys, "spikes", folders / "student", "--text", "Fair is foul, and foul is fair",
                           "--out", out)
    assert code == 0
    summary = json.loads(stdout)
    record = read_spikes(out)
    assert summary["events"] == record.events.size > 0 and summary["tokens"] == record.header["n_tokens"]
    assert record.header["source"] == str(folders / "student") and len(record.streams) == 4
    code, _, err = _run(capsys, "spikes", folders / "student", "--text", "again", "--out", out)
    assert code == 2 and "--overwrite" in err
    code, _, err = _run(capsys, "spikes", folders / "dense", "--text", "x", "--out", tmp_path / "d.npz")
    assert code == 2 and "dense model" in err


def test_bench_decode(folders, capsys, tmp_path):
    code, out, _ = _run(capsys, "bench-decode", folders / "dense", "--rates", "0.1,0.5", "--batch-sizes", "1,2",
                        "--tokens", 2, "--repeats", 1, "--warmup", 1, "--json", tmp_path / "r.json")
    assert code == 0 and "| batch |" in out and "break-even firing rate, batch 1, whole step" in out
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [(r["batch"], r["target_rate"]) for r in results] == [(1, 0.1), (2, 0.1), (1, 0.5), (2, 0.5)]
    code, out, _ = _run(capsys, "bench-decode", folders / "dense", "--rates", "0.4/0.1", "--batch-sizes", "1",
                        "--tokens", 2, "--repeats", 1, "--warmup", 1, "--json", tmp_path / "p.json")
    assert code == 0 and "| 1 | in_proj=0.4,out_proj=0.1 |" in out
    result = json.loads((tmp_path / "p.json").read_text())["results"][0]
    assert result["target_rate"] == {"in_proj": 0.4, "out_proj": 0.1}
    assert result["efficiency"] == pytest.approx(result["speedup"] / result["bound"]) and result["bound"] > 1
    assert result["efficiency_cpu"] == pytest.approx(result["speedup_cpu"] / result["bound"])
    code, out, _ = _run(capsys, "bench-decode", folders / "dense", "--rates", "out_proj=0.2,in_proj=0.3,in_proj=0.1,"
                        "out_proj=0.05,0.2", "--batch-sizes", "1", "--tokens", 2, "--repeats", 1, "--warmup", 1,
                        "--threads", 1)
    rows = [line for line in out.splitlines() if line.startswith("| 1 |")]
    assert code == 0 and "1 threads" in out and "sites in_proj,out_proj" in out
    assert [row.split(" | ")[1] for row in rows[:3]] == ["out_proj=0.2,in_proj=0.3", "in_proj=0.1,out_proj=0.05", "0.20"]
    assert all(row.count("%") == 4 for row in rows)     # efficiency, whole step and blocks, wall and CPU time
    code, out, _ = _run(capsys, "bench-decode", folders / "dense", "--sites", "all", "--rates",
                        "0.1,in_proj=0.2,x_proj=0.1,dt_proj=0.3,out_proj=0.1,lm_head=0.05", "--batch-sizes", "1",
                        "--tokens", 2, "--repeats", 1, "--warmup", 1, "--json", tmp_path / "all.json")
    assert code == 0 and "sites in_proj,x_proj,dt_proj,out_proj,lm_head" in out
    results = json.loads((tmp_path / "all.json").read_text())["results"]
    assert results[1]["target_rate"] == {"in_proj": 0.2, "x_proj": 0.1, "dt_proj": 0.3, "out_proj": 0.1,
                                         "lm_head": 0.05}
    assert all(r["bound"] > r["bound_blocks"] / 10 and r["efficiency"] > 0 for r in results)
    code, _, err = _run(capsys, "bench-decode", folders / "dense", "--sites", "all", "--rates", "0.4/0.1",
                        "--batch-sizes", "1", "--tokens", 2, "--repeats", 1)
    assert code == 2 and "no firing rate for the spiking site(s) dt_proj, lm_head, x_proj" in err
    code, out, _ = _run(capsys, "bench-decode", folders / "student", "--batch-sizes", "1", "--tokens", 2,
                        "--repeats", 1, "--warmup", 0)
    assert code == 0 and "| 1 | own |" in out                        # a student keeps its own thresholds


@pytest.mark.parametrize("args, message", [
    ([], "either MODEL or --shape"), (["--shape", "7b"], "argument --shape: invalid choice"),
    (["--shape", "130m", "--rates", "0,0.5"], "rates must lie in (0, 1]"),
    (["--shape", "130m", "--rates", "0.3/0"], "rates must lie in (0, 1]"),
    (["--shape", "130m", "--rates", "0.3/0.1/0.2"], "rates entries are R, SITE=R or IN/OUT"),
    (["--shape", "130m", "--rates", "in_proj=x"], "rates must be numbers"),
    (["--shape", "130m", "--rates", "nope=0.1"], "unknown site 'nope' in --rates"),
    (["--shape", "130m", "--sites", "in_proj,nope"], "--sites must be 'all' or a non-empty subset"),
    (["--shape", "130m", "--batch-sizes", "a"], "batch_sizes must be comma-separated integers"),
    (["--shape", "130m", "--tokens", "0"], "tokens must be >= 1"),
])
def test_bench_decode_bad_input_exits_2(capsys, args, message):
    code, _, err = _run(capsys, "bench-decode", *args)
    assert code == 2 and message in err
