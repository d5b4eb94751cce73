"""Build chatsvc's container image with podman or docker, for `make image`, `make image-test` and the tests.

    python -m tools.container image     # build chatsvc:latest (what `make image` runs)
    python -m tools.container base      # only find or build the base image, and print its name

The image installs chatsvc from wheels made here: chatsvc's own, built from the checkout, and those of its
dependencies for CPython 3.11 on Linux at the versions installed in this virtualenv, so the build itself needs
no network. The base image is the public default of the Containerfile when the engine has it or can pull it;
otherwise (a machine without access to an image registry) one is made from Debian's python3 and python3-venv
packages with mmdebstrap and imported, once: later builds find it in the engine's store.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "container"
WHEELS = WORK / "wheels"
IMAGE = "chatsvc:latest"
# The Containerfile labels both of its stages so.
LABEL = "org.opencontainers.image.title=chatsvc"
# The Containerfile's own default, and the one made from Debian packages where that cannot be pulled.
PUBLIC_BASE = "python:3.11-slim-bookworm"
DEBIAN_BASE = "localhost/chatsvc-base:bookworm"
DEBIAN_SUITE = "bookworm"
# The wheels are for the Python of both bases: CPython 3.11 on glibc 2.36 (Debian 12).
PYTHON_VERSION = "3.11"
GLIBC_MINOR = 36
# pip evaluates dependencies' markers for the Python running it, not for --python-version: what an older 3.11
# needs is named here. redis wants async-timeout below 3.11.3, and Debian 12's python3 is 3.11.2.
FOR_OLDER_PYTHON = ["async-timeout>=4.0.3"]
# Pulling fails at once where no registry is reachable; a slow registry gets this long.
PULL_TIMEOUT = 180
BUILD_TIMEOUT = 900


class EngineError(Exception):
    """The container engine cannot do what was asked; the message says why, in the engine's own words."""


@dataclass
class Engine:
    """A container engine command (podman or docker) and the environment it needs on this machine."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    # The base image, once base_image() has found or made it: it tries a registry only once.
    base: str | None = None

    def command(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `engine ARGS...` and return its result; raise EngineError with its output if it fails."""
        result = subprocess.run(
            [self.name, *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise EngineError(f"`{self.name} {' '.join(args)}` failed ({result.returncode}): {last_lines(result)}")
        return result

    def has_image(self, name: str) -> bool:
        """Whether the engine's store holds the image."""
        return self.command("image", "inspect", name, check=False).returncode == 0

    def image_size(self, name: str) -> int:
        """The image's size in bytes, as the engine reports it (uncompressed, all layers)."""
        return int(self.command("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())

    def image_config(self, name: str) -> dict[str, object]:
        """The image's configuration: user, volumes, exposed ports, health check, environment."""
        inspected = json.loads(self.command("image", "inspect", name).stdout)[0]
        config: dict[str, object] = dict(inspected["Config"])
        # docker keeps the health check in Config, podman beside it.
        if "Healthcheck" in inspected:
            config.setdefault("Healthcheck", inspected["Healthcheck"])
        return config


def last_lines(result: subprocess.CompletedProcess[str], count: int = 5) -> str:
    """The end of a command's output: where engines say what went wrong."""
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return " | ".join(lines[-count:]) or "no output"


def hybrid_cgroups() -> bool:
    """cgroup v1 controllers with a cgroup v2 tree beside them, which crun and systemd's manager refuse."""
    return os.path.ismount("/sys/fs/cgroup/unified")


def find_engine() -> Engine:
    """podman if installed, otherwise docker if its daemon answers; raise EngineError saying what is missing."""
    if shutil.which("podman"):
        return podman()
    if shutil.which("docker"):
        result = subprocess.run(["docker", "info"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode == 0:
            return Engine("docker")
        raise EngineError(f"podman is not installed and docker has no engine: {last_lines(result, 1)}")
    raise EngineError("neither podman nor docker is installed")


def podman() -> Engine:
    """podman, with what this machine needs to run containers."""
    engine = Engine("podman")
    # As root with hybrid cgroups, crun refuses to create a container ("cgroups in hybrid mode not supported")
    # and podman's default open-files limit cannot be set ("setrlimit RLIMIT_NOFILE: Operation not permitted"):
    # runc, the cgroupfs manager and no default ulimits, in a containers.conf that builds and podman-compose
    # read too.
    if os.geteuid() == 0 and hybrid_cgroups():
        if not shutil.which("runc"):
            raise EngineError("this machine has hybrid cgroups, which crun refuses: install runc")
        WORK.mkdir(parents=True, exist_ok=True)
        conf = WORK / "containers.conf"
        conf.write_text(
            "# Written by tools/container.py for a root machine with hybrid cgroups.\n"
            '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'
        )
        engine.env["CONTAINERS_CONF"] = str(conf)
    return engine


def base_image(engine: Engine, wanted: str | None = None) -> str:
    """The base image to build on: `wanted` (CHATSVC_BASE_IMAGE), else the public default when present or
    pullable, else one made from Debian packages (made once, then found in the engine's store)."""
    if engine.base is None:
        engine.base = find_base_image(engine, wanted or os.environ.get("CHATSVC_BASE_IMAGE"))
    return engine.base


def find_base_image(engine: Engine, wanted: str | None) -> str:
    """What base_image() answers, found or made anew."""
    if wanted:
        if not engine.has_image(wanted):
            engine.command("pull", wanted, timeout=PULL_TIMEOUT)
        return wanted
    if engine.has_image(PUBLIC_BASE):
        return PUBLIC_BASE
    pulled = engine.command("pull", PUBLIC_BASE, timeout=PULL_TIMEOUT, check=False)
    if pulled.returncode == 0:
        return PUBLIC_BASE
    if engine.has_image(DEBIAN_BASE):
        return DEBIAN_BASE
    print(f"{PUBLIC_BASE} cannot be pulled ({last_lines(pulled, 1)}); making {DEBIAN_BASE} from Debian packages")
    build_debian_base(engine)
    return DEBIAN_BASE


def build_debian_base(engine: Engine) -> None:
    """Make DEBIAN_BASE with mmdebstrap: the essential packages, python3 and python3-venv, nothing else."""
    if not shutil.which("mmdebstrap"):
        raise EngineError(f"{PUBLIC_BASE} cannot be pulled and mmdebstrap is not installed to make a base")
    WORK.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WORK) as scratch:
        tarball = Path(scratch) / "base.tar"
        # The essential variant has no apt, and the merged-usr hook stands in for the usrmerge package, which
        # would pull in all of Perl: 105 MB instead of 177 MB of minbase. Documentation is left out too.
        result = subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=essential",
                "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
                "--include=python3,python3-venv",
                *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "info", "locale")),
                DEBIAN_SUITE,
                str(tarball),
            ],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise EngineError(f"mmdebstrap failed ({result.returncode}): {last_lines(result)}")
        engine.command("import", str(tarball), DEBIAN_BASE, timeout=BUILD_TIMEOUT)


def build_wheels(python: str = sys.executable) -> None:
    """chatsvc's wheel from the checkout, and its dependencies' wheels for the image's Python, into WHEELS.

    Dependencies come at the versions installed beside `python` (the ones the tests ran against)."""
    shutil.rmtree(WHEELS, ignore_errors=True)
    WHEELS.mkdir(parents=True)
    pip = [python, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    run_checked([*pip, "wheel", "--no-deps", "--wheel-dir", str(WHEELS), str(ROOT)])
    freeze = run_checked([*pip, "freeze", "--exclude-editable"]).stdout
    constraints = WORK / "constraints.txt"
    constraints.write_text("".join(line + "\n" for line in freeze.splitlines() if "==" in line))
    (wheel,) = WHEELS.glob("chatsvc-*.whl")
    # pip takes explicit platforms literally, so every glibc a manylinux wheel may ask for is listed.
    machine = platform.machine()
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MINOR, 4, -1)]
    platforms += [f"{legacy}_{machine}" for legacy in ("manylinux2014", "manylinux2010", "manylinux1")]
    run_checked(
        [
            *pip,
            "download",
            "--only-binary=:all:",
            "--implementation=cp",
            f"--python-version={PYTHON_VERSION}",
            *(f"--platform={name}" for name in platforms),
            f"--constraint={constraints}",
            f"--dest={WHEELS}",
            f"{wheel}[postgres]",
            *FOR_OLDER_PYTHON,
        ]
    )
    if shutil.which("strip"):
        for binary_wheel in WHEELS.glob("*linux*.whl"):
            strip_wheel(binary_wheel)


def strip_wheel(wheel: Path) -> None:
    """Drop the debugging symbols of a wheel's compiled extensions, in place, and write its RECORD anew.

    They are most of what the extensions weigh (uvloop's 13.6 MB of code is 1.6 MB without them): 27 MB of the
    52 MB that chatsvc adds to the image. Nothing reads them at run time."""
    with tempfile.TemporaryDirectory(dir=WORK) as scratch:
        tree = Path(scratch)
        with zipfile.ZipFile(wheel) as archive:
            names = [name for name in archive.namelist() if not name.endswith("/")]
            archive.extractall(tree)
        libraries = [str(tree / name) for name in names if name.endswith(".so") or ".so." in name]
        if not libraries:
            return
        run_checked(["strip", "--strip-unneeded", *libraries])
        (record_name,) = (name for name in names if name.endswith(".dist-info/RECORD"))
        lines = []
        for name in names:
            if name == record_name:
                lines.append(f"{name},,")
                continue
            data = (tree / name).read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines.append(f"{name},sha256={digest},{len(data)}")
        (tree / record_name).write_text("\n".join(lines) + "\n")
        stripped = wheel.with_suffix(".tmp")
        with zipfile.ZipFile(stripped, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in names:
                archive.write(tree / name, name)
        stripped.replace(wheel)


def run_checked(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a local command; raise EngineError with its output if it fails."""
    result = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=BUILD_TIMEOUT)
    if result.returncode != 0:
        raise EngineError(f"`{' '.join(args[:4])} ...` failed ({result.returncode}): {last_lines(result)}")
    return result


def build_image(engine: Engine, base: str, tag: str = IMAGE) -> None:
    """Build the Containerfile over the wheels in WHEELS."""
    # OCI image configs have no HEALTHCHECK: podman keeps it only in the docker format.
    fmt = ["--format", "docker"] if engine.name == "podman" else []
    engine.command(
        "build",
        *fmt,
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--tag",
        tag,
        "--file",
        str(ROOT / "Containerfile"),
        str(ROOT),
        timeout=BUILD_TIMEOUT,
    )
    # Each build leaves its build stage and the image it replaced under that tag untagged: remove ours only.
    engine.command("image", "prune", "--force", "--filter", f"label={LABEL}", check=False)


def main(argv: list[str] | None = None) -> int:
    """The command line: build the image, or only its base."""
    parser = argparse.ArgumentParser(prog="python -m tools.container", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["image", "base"])
    parser.add_argument("--tag", default=IMAGE)
    parser.add_argument("--base", help="base image (default: $CHATSVC_BASE_IMAGE, else as described above)")
    args = parser.parse_args(argv)
    try:
        engine = find_engine()
        base = base_image(engine, args.base)
        if args.what == "base":
            print(base)
            return 0
        build_wheels()
        build_image(engine, base, args.tag)
        size = engine.image_size(args.tag)
    except EngineError as exc:
        print(f"chatsvc image: {exc}", file=sys.stderr)
        return 1
    print(f"built {args.tag} with {engine.name} on {base}: {size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
