"""Every shipped config and accelerate config loads and validates (no training)."""

from pathlib import Path

import pytest
import yaml

from recipes.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
DISTRIBUTED = {"NO", "MULTI_CPU", "MULTI_GPU", "FSDP", "DEEPSPEED"}


@pytest.mark.parametrize("path", sorted((RECIPES / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_validates(path):
    recipe = load_recipe(path)
    assert recipe.finetune.model.name and Path(recipe.finetune.data.train_file).is_file()
    assert recipe.untuned.training.learning_rate == 5e-5
    # No trial needs a larger per-device batch than the one the recipe states, not the untuned run's 8
    # (larger effective batches accumulate gradients).
    assert recipe.search.max_per_device_batch == recipe.finetune.training.per_device_train_batch_size


@pytest.mark.parametrize("path", sorted((RECIPES / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_config_is_valid(path):
    from accelerate.commands.config.config_args import load_config_from_file

    raw = yaml.safe_load(path.read_text())
    assert raw["distributed_type"] in DISTRIBUTED
    assert raw["num_processes"] >= 1 and raw["num_machines"] == 1
    config = load_config_from_file(str(path))  # accelerate's own parser accepts it
    assert str(config.distributed_type).split(".")[-1] == raw["distributed_type"]
    if raw["distributed_type"] == "FSDP":
        assert raw["fsdp_config"]["fsdp_version"] == 2
    if raw["distributed_type"] == "DEEPSPEED":
        assert raw["deepspeed_config"]["zero_stage"] == 3


@pytest.mark.parametrize("path", sorted((RECIPES / "configs" / "gpu").glob("*.yaml")), ids=lambda p: p.name)
def test_gpu_example_recipe_validates(path):
    """GPU examples use Hub models and datasets: validated here without downloading anything."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    recipe = load_recipe(path)
    config = recipe.finetune
    assert "/" in config.model.name and config.data.dataset, "a Hub model id and a Hub dataset"
    assert config.training.mixed_precision == "bf16"
    assert recipe.untuned.training.learning_rate == 5e-5 and len(recipe.seeds) == 3
    assert config.data.test_size > 0 or "imdb" in config.data.dataset  # IMDB's own test split is labelled
    # The untuned LoRA baseline uses peft's per-architecture target modules: the architecture must have them.
    family = {"Qwen": "qwen2", "meta-llama": "llama", "google-bert": "bert"}[config.model.name.split("/")[0]]
    assert config.method.name == "full" or family in PEFT_DEFAULTS
    # Every example states its launch command(s) in its header.
    assert f"tunelab run recipes/configs/gpu/{path.name}" in path.read_text()
    assert "accelerate launch --config_file recipes/accelerate/" in path.read_text()


def test_cluster_examples_are_valid_and_start_workers():
    import subprocess

    slurm = RECIPES / "cluster" / "slurm_workers.sh"
    assert subprocess.run(["bash", "-n", str(slurm)], capture_output=True).returncode == 0
    assert "exec tunelab worker" in slurm.read_text() and "#SBATCH --gres=gpu:1" in slurm.read_text()
    job = yaml.safe_load((RECIPES / "cluster" / "k8s_workers.yaml").read_text())
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["tunelab", "worker"]
    assert (RECIPES.parent / container["command"][2]).is_file()  # the recipe it names ships
    assert "--storage" in container["args"]
    assert job["spec"]["parallelism"] >= 2
