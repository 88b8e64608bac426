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


NEW_METRIC = '''
from lit_attacks.metrics.base import Distance
from lit_attacks.metrics.registry import METRICS


class LinfDistance(Distance):
    def _distance(self, ref, x):
        return (ref - x).abs().amax(dim=(1, 2, 3))


@METRICS.register("linf_pixel", what="largest absolute difference", distance="as is", weights="none")
def linf_pixel(**kw):
    return LinfDistance(**kw)
'''

DROP_IN = '''
import importlib.util, sys
spec = importlib.util.find_spec("lit_attacks.metrics")
spec.submodule_search_locations.append(sys.argv[1])  # as if the file were in lit_attacks/metrics/
module = importlib.util.module_from_spec(spec)
sys.modules["lit_attacks.metrics"] = module
spec.loader.exec_module(module)
import torch
from lit_attacks.metrics import create_metric
from lit_attacks.metrics.catalog import table
ref, x = torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)
x[0, 1, 2, 3], x[1, 0, 0, 0] = 0.5, -0.25
print(create_metric("linf_pixel")(ref, x).tolist())
print(next(row for row in table().splitlines() if "linf_pixel" in row))
'''


def test_a_new_metric_is_one_module_with_its_table_row(tmp_path):
    """Dropping one module into the metrics package registers the metric (created by name, its distances right)
    and gives its row of the documentation's metric table from what the registration declares."""
    import subprocess
    import sys

    (tmp_path / "linf_pixel_module.py").write_text(NEW_METRIC)
    out = subprocess.run([sys.executable, "-c", DROP_IN, str(tmp_path)], capture_output=True, text=True, check=True)
    distances, row = out.stdout.splitlines()
    assert distances == "[0.5, 0.25]"
    assert row == "| `linf_pixel` | largest absolute difference | as is | none | not yet: no published value checked |"


def test_every_registration_declares_its_table_fields():
    from lit_attacks.metrics.catalog import FIELDS, describe

    for name in METRICS.names() + METRICS.prefixes():
        info = describe(name)
        assert all(info[f] for f in FIELDS) and "\n" not in "".join(info.values()), name
    reg = Registry("metric")
    reg.register("bare")(lambda: None)
    with pytest.raises(ValueError, match=r"metric 'bare' is registered without what, distance, weights"):
        describe_in(reg, "bare")


def describe_in(reg, name):
    from lit_attacks.metrics import catalog

    saved = catalog.METRICS
    catalog.METRICS = reg
    try:
        return catalog.describe(name)
    finally:
        catalog.METRICS = saved
