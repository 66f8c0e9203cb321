"""Ships recipes/, requirements/ and envs/ inside the wheel, as `warmstart/_shipped/`.

They stay at the top of the checkout (data, next to tasks.py, where a maintainer edits them);
an installed `warmstart` finds them in the package instead (warmstart.PROJECT_ROOT).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("recipes", "requirements", "envs")


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # an editable install reads them from the checkout itself
        target = Path(self.build_lib) / "warmstart" / "_shipped"
        for folder in SHIPPED:
            shutil.rmtree(target / folder, ignore_errors=True)
            shutil.copytree(folder, target / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithData})
