"""Package layout only (metadata lives in pyproject.toml): the repository's `configs/`
ship inside the wheel as `jaxprune.configs`, so every command runs from an install."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["jaxprune", "jaxprune.*"]) + ["jaxprune.configs"],
      package_dir={"jaxprune.configs": "configs"})
