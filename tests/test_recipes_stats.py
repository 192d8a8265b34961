import pytest
from scipy import stats

from recipes.stats import compare


def test_clear_difference_is_significant():
    result = compare([0.87, 0.875, 0.872], [0.80, 0.81, 0.795])
    assert result.difference == pytest.approx(0.0707, abs=1e-3)
    assert result.significant and result.p_value < 0.01
    assert result.ci_low > 0 and result.ci_low <= result.difference <= result.ci_high


def test_p_value_is_welch():
    a, b = [0.81, 0.83, 0.80, 0.84], [0.80, 0.79, 0.82]
    assert compare(a, b).p_value == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_noise_is_not_significant():
    result = compare([0.80, 0.82, 0.81], [0.81, 0.80, 0.82])
    assert not result.significant and result.ci_low < 0 < result.ci_high


def test_identical_constant_arms():
    result = compare([0.5, 0.5], [0.5, 0.5])
    assert result.p_value == 1.0 and result.difference == 0.0


def test_needs_two_seeds():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        compare([0.8], [0.7, 0.71])
