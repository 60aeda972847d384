"""The live grid takes a slow model's staleness unless the config says otherwise."""

from types import SimpleNamespace

from appliance.detector.config import WindowConfig
from appliance.runtime import grid_limits


def model(staleness_s):
    return SimpleNamespace(bundle=SimpleNamespace(staleness_s=staleness_s))


def test_a_three_minute_model_keeps_its_staleness_live():
    assert grid_limits(WindowConfig(), model(900.0)) == (900.0, 2.0)


def test_a_fast_model_keeps_the_lenient_default():
    assert grid_limits(WindowConfig(), model(0.5)) == (5.0, 2.0)


def test_what_the_config_sets_wins():
    assert grid_limits(WindowConfig(staleness_s=60.0, lateness_s=1.0), model(900.0)) == (60.0, 1.0)


def test_a_bundle_that_does_not_say_uses_the_config():
    assert grid_limits(WindowConfig(), model(None)) == (5.0, 2.0)
    assert grid_limits(WindowConfig(), SimpleNamespace(bundle=None)) == (5.0, 2.0)  # a model not from a bundle
