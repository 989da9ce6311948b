"""slimlens reports: measure variants (metric, size, latency, memory) and render one self-contained HTML report.

>>> import zoo, reports
>>> from compress import TorchVariant
>>> original = TorchVariant(name="original", module=zoo.load("seed-autoencoder"), source={"zoo": "seed-autoencoder"})
>>> results = reports.measure([original], "seed-autoencoder", devices="cpu", cfg=reports.TimingConfig(compile=False))
>>> results["variants"][0]["latency"]["cpu"]["batch1_p50_ms"] > 0
True
>>> reports.render([results | {"_dir": "."}], "report.html")  # or reports.render(["run-folder"], ...)
PosixPath('report.html')
"""

from reports.errors import DeviceError, ReportError
from reports.latency import TimingConfig
from reports.results import RESULTS_FILE, SCHEMA, read_results, write_results

# Functions named like their modules (bench, latency, render) are bound last, so that the package
# attribute is the function, not the submodule.
from reports.bench import bench  # noqa: E402
from reports.measure import latencies, latency, measure, parse_devices  # noqa: E402
from reports.render import render  # noqa: E402

__all__ = [
    "DeviceError",
    "RESULTS_FILE",
    "ReportError",
    "SCHEMA",
    "TimingConfig",
    "bench",
    "latencies",
    "latency",
    "measure",
    "parse_devices",
    "read_results",
    "render",
    "write_results",
]
