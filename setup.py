"""The code packages found on disk, plus three data folders of the repository shipped inside the wheel
as resource packages (found by ``benchmark.resources``): ``datasets/`` (cards, prompt sets, split
lists), ``results/paper/`` (the paper's tables) and ``weights/`` (the demo model weights).
Everything else is configured in pyproject.toml."""

from setuptools import find_namespace_packages, setup

RESOURCES = {"afloc_bench_datasets": "datasets", "afloc_bench_paper": "results/paper",
             "afloc_bench_weights": "weights"}
EXCLUDE = ["*.__pycache__", "*.__pycache__.*"]


def resource_packages(package: str, folder: str) -> list[str]:
    return [package] + [f"{package}.{sub}" for sub in find_namespace_packages(where=folder, exclude=EXCLUDE)]


packages = find_namespace_packages(include=["afloc", "afloc.*", "afloc_bench", "baselines", "baselines.*", "benchmark",
                                            "benchmark.*"], exclude=EXCLUDE)
for name, folder in RESOURCES.items():
    packages += resource_packages(name, folder)
setup(packages=packages, package_dir=RESOURCES)
