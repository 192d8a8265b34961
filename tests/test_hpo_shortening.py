"""A proposal too long for the step budget runs as its longest shorter variant that fits (hpo.finetune.admission)."""

from hpo.finetune.admission import EPOCHS, SHORTENED_EVALUATIONS, longest_fitting, shorter_variants
from hpo.finetune.config_space import EFFECTIVE_BATCH_SIZE
from hpo.space import Categorical, Float, Int, SearchSpace

SPACE = SearchSpace(
    {
        "training.learning_rate": Float(low=1e-5, high=1e-2, log=True),
        EPOCHS: Int(low=1, high=5),
        EFFECTIVE_BATCH_SIZE: Categorical(choices=(8, 16, 32)),
    }
)
PROPOSAL = {"training.learning_rate": 1.9e-3, EPOCHS: 5, EFFECTIVE_BATCH_SIZE: 8}


def _steps(params, rows=500):
    """Optimizer steps of a run: epochs x ceil(rows / batch)."""
    return params[EPOCHS] * -(-rows // params[EFFECTIVE_BATCH_SIZE])


def test_variants_have_fewer_epochs_and_keep_everything_else():
    variants = shorter_variants(PROPOSAL, SPACE)
    assert [v[EPOCHS] for v in variants] == [1, 2, 3, 4]
    assert all(v["training.learning_rate"] == 1.9e-3 and v[EFFECTIVE_BATCH_SIZE] == 8 for v in variants)
    assert all(_steps(v) < _steps(PROPOSAL) for v in variants)


def test_the_longest_variant_that_fits_is_chosen():
    # 5 epochs at batch 8 = 315 steps; room for 260: 4 epochs (252); room for 90: 1 epoch (63).
    variant, steps = longest_fitting(PROPOSAL, SPACE, length=_steps, fits=lambda n: n <= 260)
    assert (variant[EPOCHS], variant[EFFECTIVE_BATCH_SIZE], steps) == (4, 8, 252)
    variant, steps = longest_fitting(PROPOSAL, SPACE, length=_steps, fits=lambda n: n <= 90)
    assert (variant[EPOCHS], variant[EFFECTIVE_BATCH_SIZE], steps) == (1, 8, 63)


def test_nothing_shorter_when_nothing_fits_or_the_length_is_not_searched():
    assert longest_fitting(PROPOSAL, SPACE, length=_steps, fits=lambda n: n < 16) is None
    only_lr = SearchSpace({"training.learning_rate": Float(low=1e-5, high=1e-2, log=True)})
    assert shorter_variants({"training.learning_rate": 1e-3}, only_lr) == []


def test_no_variant_shorter_than_the_floor_runs():
    # The search passes SHORTENED_EVALUATIONS evaluation intervals as the floor (SearchPlan.shortest_trial_steps):
    # below it a trial would pass no rung. Room for 90 steps: 1 epoch (63) fits but is under a floor of 3 x 42 = 126.
    floor = SHORTENED_EVALUATIONS * 42
    assert longest_fitting(PROPOSAL, SPACE, length=_steps, fits=lambda n: n <= 90, shortest=floor) is None
    variant, steps = longest_fitting(PROPOSAL, SPACE, length=_steps, fits=lambda n: n <= 260, shortest=floor)
    assert steps == 252 >= floor
    # Every variant longest_fitting may return is at least the floor, whatever the room.
    for room in range(0, 320, 7):
        found = longest_fitting(PROPOSAL, SPACE, length=_steps, fits=lambda n, room=room: n <= room, shortest=floor)
        assert found is None or floor <= found[1] <= room
