"""benchmarks/gpu_check.sh keeps working without a GPU: --cpu-smoke runs its steps on the CPU at
tiny sizes, writes the JSON summary and the log, and fails loudly, naming what failed."""

import json
import os
import subprocess

import pytest

from benchmarks import gpu_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(out, *args, timeout=600):
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu-smoke", *args], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=timeout)
    with open(out / "gpu_check.json", encoding="utf-8") as handle:
        return result, json.load(handle)


def test_an_unreachable_target_fails_the_run_and_is_named(tmp_path):
    """The throughput step alone (the short variant of the smoke run): it runs, reports memory
    allocated and reserved, and a train target of 1e12 samples/s fails the run by name."""
    result, summary = _run(tmp_path, "--only", "throughput", "--train-target", "1e12")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert summary["failed"] == ["target train samples/s"]
    assert summary["steps"]["throughput"]["status"] == "ok"
    assert "gpu_check FAILED (1): target train samples/s" in result.stdout.splitlines()[-2]
    figures = summary["figures"]["throughput"]
    assert figures["train_samples_per_s"] > 0 and "peak_mem_reserved_gb" in figures
    assert {t["name"] for t in summary["targets"] if t["pass"]} == {
        "eval samples/s (flip test)", "peak train memory, allocated"}
    with open(tmp_path / "gpu_check.log", encoding="utf-8") as handle:
        assert "train_samples_per_s" in handle.read()  # the step's own output


@pytest.mark.slow
def test_cpu_smoke_passes_end_to_end(tmp_path):
    """Every step and target of the script on the CPU (about 2-3 minutes on 2 cores)."""
    result, summary = _run(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert summary["failed"] == [] and len(summary["targets"]) >= 6
    assert set(summary["steps"]) >= {"dependencies", "tests", "throughput", "encoder",
                                     "bf16_vs_fp32", "input_pipeline"}


def test_missing_packages_stop_the_check_first_and_are_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "REQUIRED_MODULES",
                        ("torch", "no_such_module_regex_stand_in"))
    status = gpu_check.main(["--cpu-smoke", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert status == 1
    assert summary["failed"] == ["step dependencies (missing: no_such_module_regex_stand_in)"]
    assert list(summary["steps"]) == ["dependencies"]  # nothing else ran
    assert ".whl" in capsys.readouterr().out


def test_a_step_past_the_deadline_is_not_run_and_named(tmp_path):
    args = gpu_check.build_parser().parse_args(["--cpu-smoke", "--out", str(tmp_path),
                                                "--deadline", "12"])
    check = gpu_check.Check(args)
    assert check.run("encoder", ["true"], limit=60) is None
    assert check.finish() == 1
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["failed"] == ["step encoder (not run: deadline)"]
