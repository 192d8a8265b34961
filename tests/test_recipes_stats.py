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


def test_the_interval_is_welchs_by_hand():
    # a: mean 2, variance 1; b: mean 6, variance 4; 3 seeds each. Standard error sqrt(1/3 + 4/3);
    # Welch-Satterthwaite df = (5/3)^2 / ((1/3)^2 / 2 + (4/3)^2 / 2) = 50/17.
    result = compare([1.0, 2.0, 3.0], [4.0, 6.0, 8.0])
    half = stats.t.ppf(0.975, 50 / 17) * (5 / 3) ** 0.5
    assert result.ci_method == "welch"
    assert (result.ci_low, result.ci_high) == pytest.approx((-4 - half, -4 + half))
    assert half == pytest.approx(4.1554, abs=1e-3)  # t(0.975, 2.94) = 3.219, times 1.291
    scipy_interval = stats.ttest_ind([1.0, 2.0, 3.0], [4.0, 6.0, 8.0], equal_var=False).confidence_interval()
    assert (result.ci_low, result.ci_high) == pytest.approx((scipy_interval.low, scipy_interval.high))
    # The interval and the test agree: p > 0.05 exactly when the interval holds 0.
    assert result.p_value > 0.05 and result.ci_low < 0 < result.ci_high


def test_bootstrap_only_with_ten_seeds_per_arm():
    few = compare([0.87, 0.875, 0.872], [0.80, 0.81, 0.795])
    many = compare([0.87 + 0.001 * i for i in range(10)], [0.80 + 0.001 * i for i in range(10)])
    assert few.ci_method == "welch" and many.ci_method == "bootstrap"
