"""The package ships every file it needs, and setuptools has nothing to warn about while building it."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from setuptools.config.setupcfg import read_configuration

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "chatsvc"


def test_packaging_every_folder_of_the_package_is_a_listed_package() -> None:
    # A folder of files that is not in `packages` (chatsvc/static once was) makes every
    # `pip install` print setuptools' long "absent from the packages configuration" warning.
    options = read_configuration(ROOT / "setup.cfg")["options"]
    packages = set(options["packages"])
    folders = {
        ".".join(Path(folder).relative_to(ROOT).parts)
        for folder, _, files in os.walk(PACKAGE)
        if "__pycache__" not in Path(folder).parts and files
    }
    assert sorted(folders - packages) == []


def test_packaging_every_data_file_is_in_package_data() -> None:
    options = read_configuration(ROOT / "setup.cfg")["options"]
    package_data: dict[str, list[str]] = options["package_data"]
    missing = []
    for folder, _, files in os.walk(PACKAGE):
        if "__pycache__" in Path(folder).parts:
            continue
        package = ".".join(Path(folder).relative_to(ROOT).parts)
        patterns = package_data.get(package, [])
        for name in files:
            if not name.endswith((".py", ".pyc")) and not any(fnmatch.fnmatch(name, p) for p in patterns):
                missing.append(f"{package}: {name}")
    assert missing == []
