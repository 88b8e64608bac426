import pytest

from lit_attacks.metrics import METRICS, create_metric, list_metrics
from lit_attacks.registry import Registry

REQUIRED = ["l2", "ssim", "ms_ssim", "fsimc", "gmsd", "haarpsi", "lpips_alex", "lpips_vgg", "lpips_squeeze",
            "dists", "elpips_style"]


def test_required_metrics_registered():
    assert set(REQUIRED) <= set(list_metrics())


def test_names_filter_by_pattern():
    assert list_metrics("lpips_*") == ["lpips_alex", "lpips_squeeze", "lpips_vgg"]
    assert list_metrics("nothing*") == []


def test_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError, match=r"unknown metric 'lpips_alx'.*did you mean 'lpips_alex'"):
        create_metric("lpips_alx")


def test_unknown_name_without_close_match_lists_known():
    with pytest.raises(KeyError, match=r"Known metrics: .*ssim"):
        METRICS.get("zzzzzz")


def test_duplicate_registration_raises():
    reg = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(KeyError, match="already registered"):
        reg.register("a")(lambda: 2)
    assert reg.create("a") == 1 and "a" in reg and len(reg) == 1


def test_absent_metrics_say_why_and_are_listed_in_the_table():
    from lit_attacks.metrics import create_metric, list_metrics
    from lit_attacks.metrics.absent import ABSENT
    from lit_attacks.metrics.catalog import table

    with pytest.raises(KeyError, match="metric 'gti_cnn' is not available: no public implementation or weights found"):
        create_metric("gti_cnn")
    with pytest.raises(KeyError, match="metric 'mad' is not available: ported .* but not registered: .*64 px"):
        create_metric("mad")
    assert set(ABSENT) == {"gti_cnn", "mad"}  # every other metric of the issue is registered
    rows = table()
    for name in ABSENT:
        assert name not in list_metrics() and f"| `{name}` (not registered) |" in rows


def test_every_metric_module_is_discovered_without_an_import_list():
    """A metric family is one module: the package imports every module it holds (as attacks and tables do),
    so a new module registers its metrics without a line elsewhere."""
    import pkgutil
    import sys

    import lit_attacks.metrics as metrics

    modules = {m.name for m in pkgutil.iter_modules(metrics.__path__)} - set(metrics.CLI_MODULES)
    assert {"lpips", "pixel", "dreamsim", "absent"} <= modules
    assert all(f"lit_attacks.metrics.{m}" in sys.modules for m in modules)
    source = open(metrics.__file__).read()
    assert "pixel" not in source and "dreamsim" not in source  # no hand-kept list of families
