#!/usr/bin/env python3
"""Build this repository's two images from its own Dockerfiles, without Docker or a registry.

Run through ``tests/cluster/images`` (which installs buildah/podman/debootstrap when missing).
What it does, each step only when its cached result is missing:

1. **Base-image stand-ins.** ``FROM python:…-slim-bookworm`` / ``FROM rust:…-slim-bookworm``
   cannot be pulled here, so local images are built under exactly those names
   (``docker.io/library/…``) from ``bookworm-minbase.tar`` (``minbase.sh``: debootstrap) and
   ``python.Containerfile`` / ``rust.Containerfile``. Cached as docker archives keyed by the hash
   of their recipe (the recipe files, the trusted CA certificates, the Rust toolchain's identity).
2. **Our images**, with ``buildah bud`` from the repository root exactly as ``docker build``
   would (same Dockerfile, same context, ``.dockerignore`` applied), tagged as the chart expects.
   Cached as docker archives keyed by the hash of the build inputs: the Dockerfile, every file
   of the build context, the base images' ids, the build arguments and this builder's version.
3. A directory with one archive per image and ``images.json`` (see ``write_set``), printed as
   the last stdout line. ``ctr -n k8s.io images import <archive>`` loads an archive into
   containerd; podman/buildah find the images in the storage named by ``storage_conf``.

Environment: ``DATASETPREP_TESTBED_CACHE`` (cache root, default ``~/.cache/datasetprep-testbed``;
this script uses ``<root>/images``), ``DATASETPREP_IMAGES_MIRROR`` (Debian mirror for
debootstrap, default ``http://deb.debian.org/debian``).
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(HERE))
from buildcontext import context_files, hash_context  # noqa: E402  (images.d is not a package)
# Bump when the way images are built changes (flags, archive format): every cache key changes.
BUILDER_VERSION = "2"
SET_FORMAT = "3"  # bump when images.json changes shape
CA_DIR = Path("/usr/local/share/ca-certificates")
MIRROR = os.environ.get("DATASETPREP_IMAGES_MIRROR", "http://deb.debian.org/debian")
KEEP_BUILDS = 3  # archives kept per image (older ones are deleted)
# `docker build` as buildah does it here: chroot isolation (no runtime, no daemon), the layer
# cache, no leftover working containers when a step fails, the docker image format (OCI has no
# HEALTHCHECK), base images only from the local storage (the stand-ins).
BUD = ["buildah", "bud", "--isolation", "chroot", "--layers", "--force-rm", "--format", "docker", "--pull=never"]


def log(msg: str) -> None:
    print(f"images: {msg}", file=sys.stderr, flush=True)


class BuildError(RuntimeError):
    """A step failed; the message says which and where its log is."""


# --------------------------------------------------------------------------------- Dockerfiles
def base_images(dockerfile: Path) -> list[str]:
    """The external images a Dockerfile's FROM lines name (stage names left out), in order."""
    stages, bases = set(), []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if not words or words[0].upper() != "FROM":
            continue
        words = [w for w in words[1:] if not w.startswith("--")]
        if words[0] not in stages and words[0] != "scratch" and words[0] not in bases:
            bases.append(words[0])
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])
    return bases


def normalize(ref: str) -> str:
    """Docker's reading of an image reference: ``python:3.11`` is ``docker.io/library/python:3.11``."""
    first, _, rest = ref.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        ref = f"docker.io/{ref}" if rest else f"docker.io/library/{ref}"
    return ref


def chart_images() -> dict[str, str]:
    """Image tags the chart deploys by default: {'image': repo:appVersion, 'jobImage': ...}."""
    chart = (REPO / "charts/datasetprep-operator/Chart.yaml").read_text()
    app = re.search(r'^appVersion:\s*"?([^"\s]+)"?', chart, re.M).group(1)
    values = (REPO / "charts/datasetprep-operator/values.yaml").read_text()
    out = {}
    for key in ("image", "jobImage"):
        block = re.search(rf"^{key}:\n((?:[ #].*\n|\n)+)", values, re.M).group(1)
        repo = re.search(r"^\s+repository:\s*(\S+)", block, re.M).group(1)
        tag = re.search(r'^\s+tag:\s*"?([^"\s]*)"?', block, re.M).group(1)
        out[key] = f"{repo}:{tag or app}"
    return out


@dataclass(frozen=True)
class Image:
    name: str            # archive name
    dockerfile: str      # relative to the repository root (the build context)
    chart_key: str       # values.yaml key whose repository/tag it is


IMAGES = (Image("datasetprep-job", "jobimage/Dockerfile", "jobImage"),
          Image("datasetprep-operator", "operator/Dockerfile", "image"))


# ------------------------------------------------------------------------------ tools, storage
class Tools:
    """buildah/podman calls against this script's own container storage (under the cache)."""

    def __init__(self, cache: Path):
        self.cache = cache
        self.logs = cache / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        run_id = hashlib.sha256(str(cache).encode()).hexdigest()[:12]
        self.storage_conf = cache / "storage.conf"
        self.registries_conf = cache / "registries.conf"
        driver = os.environ.get("DATASETPREP_IMAGES_STORAGE_DRIVER", "overlay")
        _write_if_changed(self.storage_conf, (
            "# Written by tests/cluster/images: the test bed's own container storage.\n"
            "[storage]\n"
            f'driver = "{driver}"\n'
            f'graphroot = "{cache / "storage"}"\n'
            f'runroot = "/run/datasetprep-testbed-images-{run_id}"\n'))
        # podman's own run-time state (the "alive" file, events) too, away from the machine's.
        self.containers_conf = cache / "containers.conf"
        _write_if_changed(self.containers_conf, (
            "# Written by tests/cluster/images.\n"
            "[engine]\n"
            f'tmp_dir = "/run/datasetprep-testbed-images-{run_id}/libpod"\n'
            'events_logger = "file"\n'
            'cgroup_manager = "cgroupfs"\n'))
        # Docker's reading of short names (docker.io), whatever the machine's registries.conf says.
        _write_if_changed(self.registries_conf, (
            "# Written by tests/cluster/images.\n"
            'unqualified-search-registries = ["docker.io"]\n'
            'short-name-mode = "permissive"\n'))
        self.env = dict(os.environ, CONTAINERS_STORAGE_CONF=str(self.storage_conf),
                        CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
                        CONTAINERS_CONF=str(self.containers_conf), BUILDAH_ISOLATION="chroot")

    def run(self, args: list[str], *, log_name: str | None = None, timeout: float = 3600) -> str:
        """Run a command; its output goes to logs/<log_name>.log when named (tail shown on failure)."""
        if log_name is None:
            p = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)
            if p.returncode != 0:
                raise BuildError(f"{' '.join(args)} failed (exit {p.returncode}):\n{p.stderr.strip()[-3000:]}")
            return p.stdout
        path = self.logs / f"{log_name}.log"
        with open(path, "w") as f:
            f.write(f"$ {' '.join(args)}\n")
            f.flush()
            p = subprocess.run(args, env=self.env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
        if p.returncode != 0:
            tail = path.read_text(errors="replace").splitlines()[-40:]
            raise BuildError(f"{' '.join(args[:2])} failed (exit {p.returncode}); last lines of {path}:\n"
                             + "\n".join(tail))
        return ""

    def drop_leftovers(self) -> None:
        """Working containers a killed build left behind (we hold the cache's lock: none is live)."""
        subprocess.run(["buildah", "rm", "--all"], env=self.env, capture_output=True, timeout=300)

    def image_id(self, ref: str) -> str | None:
        p = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", ref],
                           env=self.env, capture_output=True, text=True, timeout=120)
        return f"sha256:{p.stdout.strip()}" if p.returncode == 0 and p.stdout.strip() else None

    def ensure_loaded(self, ref: str, image_id: str, archive: Path) -> None:
        """Put the archive's image into the storage unless ``ref`` already names that image."""
        if self.image_id(ref) == image_id:
            return
        log(f"loading {archive.name} into the container storage")
        self.run(["podman", "load", "-q", "-i", str(archive)])
        got = self.image_id(ref)
        if got != image_id:
            raise BuildError(f"{archive} holds {got} as {ref}, its record says {image_id}")

    def all_image_ids(self) -> set[str]:
        out = self.run(["podman", "images", "--all", "--quiet", "--no-trunc"])
        return {line.strip().removeprefix("sha256:") for line in out.split() if line.strip()}

    def drop_stale_layers(self, name: str, before: set[str], build_log: Path, replaced: str | None) -> None:
        """Delete the untagged images earlier builds of ``name`` left and this build no longer uses.

        buildah's layer cache (``--layers``) keeps every step's image; without this the storage grows
        by about a gigabyte per source change. What this build made (images that were not there
        before it) or reused ("Using cache" in its log) stays, so that the next build reuses the
        stages a change does not touch; the list is ``logs/cache-<name>.txt``. ``replaced`` (the
        image the tag named before, e.g. one loaded from an archive) goes too.
        """
        used = set(re.findall(r"^--> Using cache ([0-9a-f]{64})\s*$", build_log.read_text(), re.M))
        used |= self.all_image_ids() - before
        kept_file = self.logs / f"cache-{name}.txt"
        previous = set(kept_file.read_text().split()) if kept_file.exists() else set()
        kept_file.write_text("".join(f"{i}\n" for i in sorted(used)))
        # `podman rmi` refuses an image that a tag or another image still needs: repeat while that
        # frees more (a step's image goes once the next step's is gone); the refused ones stay.
        stale = previous - used
        if replaced:
            stale.add(replaced.removeprefix("sha256:"))
        while stale:
            gone = {i for i in sorted(stale) if subprocess.run(
                ["podman", "rmi", i], env=self.env, capture_output=True, timeout=300).returncode == 0}
            if not gone:
                break
            stale -= gone

    def save(self, ref: str, archive: Path) -> None:
        part = archive.with_name(archive.name + ".part")
        part.unlink(missing_ok=True)
        self.run(["podman", "save", "-q", "--format", "docker-archive", "-o", str(part), ref])
        part.rename(archive)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _with(stem: Path, suffix: str) -> Path:
    """``stem`` + ``suffix`` (names like python_3.11.10-…-<key> hold dots: no Path.with_suffix)."""
    return stem.with_name(stem.name + suffix)


def _slug(ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", ref.removeprefix("docker.io/library/"))


# --------------------------------------------------------------------------------- stand-ins
def ca_certificates() -> list[Path]:
    """The machine's extra trusted CA certificates (its TLS egress proxy), sorted."""
    return sorted(p for p in CA_DIR.rglob("*.crt") if p.is_file()) if CA_DIR.is_dir() else []


@dataclass
class RustToolchain:
    sysroot: Path
    version: str     # 1.95.0
    host: str        # x86_64-unknown-linux-gnu
    verbose: str     # `rustc -vV`: identifies the exact build

    @classmethod
    def of_this_machine(cls) -> "RustToolchain":
        rustc = shutil.which("rustc") or str(Path.home() / ".cargo/bin/rustc")
        try:
            vv = subprocess.run([rustc, "-vV"], capture_output=True, text=True, check=True).stdout
            sysroot = subprocess.run([rustc, "--print", "sysroot"], capture_output=True, text=True,
                                     check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError) as e:
            raise BuildError(f"the Rust stand-in copies this machine's Rust toolchain, but rustc does not run ({e}); "
                             "install Rust (https://rustup.rs) or put rustc on PATH") from None
        fields = dict(line.split(": ", 1) for line in vv.splitlines() if ": " in line)
        return cls(Path(sysroot), fields["release"], fields["host"], vv)

    def write_tar(self, out: Path) -> None:
        """rustup/toolchains/<version>-<host>/{bin,lib} and cargo/bin links, as the official image lays them out."""
        tc = f"rustup/toolchains/{self.version}-{self.host}"

        def root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            return info

        with tarfile.open(out, "w") as tar:
            for name in ("cargo", "rustc", "rustdoc"):
                tar.add(self.sysroot / "bin" / name, f"{tc}/bin/{name}", filter=root_owned)
            tar.add(self.sysroot / "lib", f"{tc}/lib", filter=root_owned)
            for name in ("cargo", "rustc", "rustdoc"):
                link = tarfile.TarInfo(f"cargo/bin/{name}")
                link.type, link.linkname, link.mode = tarfile.SYMTYPE, f"../../{tc}/bin/{name}", 0o777
                tar.addfile(root_owned(link))


@dataclass
class StandIn:
    ref: str                  # docker.io/library/python:3.11.10-slim-bookworm
    containerfile: Path
    build_args: dict[str, str]
    extra_key: str            # what else the recipe depends on (e.g. the Rust toolchain)
    toolchain: RustToolchain | None = None

    @classmethod
    def for_ref(cls, ref: str) -> "StandIn":
        repo, _, tag = ref.partition(":")
        if "@" in ref:
            raise BuildError(f"{ref}: a digest-pinned base image cannot have a local stand-in "
                             "(the stand-in is a different image); pin by tag for the test bed")
        if repo == "docker.io/library/python":
            if not re.fullmatch(r"3\.11\.\d+-slim-bookworm", tag):
                raise BuildError(f"{ref}: the stand-in is Debian bookworm's Python 3.11; it cannot stand in "
                                 "for another Python or Debian release (tests/cluster/images.d/python.Containerfile)")
            return cls(ref, HERE / "python.Containerfile", {"STANDIN_FOR": ref}, "")
        if repo == "docker.io/library/rust":
            m = re.fullmatch(r"1\.(\d+)\.\d+-slim-bookworm", tag)
            if not m:
                raise BuildError(f"{ref}: only rust:1.N.M-slim-bookworm has a stand-in "
                                 "(tests/cluster/images.d/rust.Containerfile)")
            tc = RustToolchain.of_this_machine()
            if int(tc.version.split(".")[1]) < int(m.group(1)):
                raise BuildError(f"{ref}: this machine's Rust is {tc.version}, older than the image's; "
                                 "the stand-in copies the machine's toolchain, so install a newer one")
            return cls(ref, HERE / "rust.Containerfile", {"STANDIN_FOR": ref, "RUST_VERSION": tc.version},
                       tc.verbose + str(tc.sysroot), tc)
        raise BuildError(f"{ref}: no local stand-in recipe for this base image (tests/cluster/images.d/)")

    def key(self) -> str:
        h = hashlib.sha256(f"standin {BUILDER_VERSION} {self.ref}\n".encode())
        h.update(self.containerfile.read_bytes())
        h.update(minbase_key().encode())
        for k, v in sorted(self.build_args.items()):
            h.update(f"arg {k}={v}\n".encode())
        for crt in ca_certificates():
            h.update(f"ca {crt.name}\n".encode() + crt.read_bytes())
        h.update(self.extra_key.encode())
        return h.hexdigest()[:16]


def minbase_key() -> str:
    return hashlib.sha256((HERE / "minbase.sh").read_bytes() + MIRROR.encode()).hexdigest()[:16]


def ensure_minbase(cache: Path) -> Path:
    out = cache / "standins" / f"bookworm-minbase-{minbase_key()}.tar"
    if out.exists():
        return out
    log("debootstrap: Debian bookworm minbase root filesystem (about 2 min)")
    t0 = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([str(HERE / "minbase.sh"), str(out), MIRROR], capture_output=True, text=True)
    if p.returncode != 0:
        raise BuildError(f"minbase.sh failed (exit {p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
    log(f"minbase: {out.stat().st_size >> 20} MiB in {time.monotonic() - t0:.0f} s")
    for old in out.parent.glob("bookworm-minbase-*.tar"):
        if old != out:
            old.unlink()
    return out


def ensure_standin(tools: Tools, ref: str) -> dict:
    """The stand-in for ``ref``: its record, built first (into the storage) when not cached."""
    standin = StandIn.for_ref(ref)
    key = standin.key()
    stem = tools.cache / "standins" / f"{_slug(ref)}-{key}"
    record_path, archive = _with(stem, ".json"), _with(stem, ".tar")
    if record_path.exists() and archive.exists():
        return json.loads(record_path.read_text())
    minbase = ensure_minbase(tools.cache)
    log(f"building the stand-in {ref} (no registry: see {standin.containerfile.name})")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=tools.cache) as tmp:
        ctx = Path(tmp)
        os.link(minbase, ctx / "bookworm-minbase.tar")
        (ctx / "ca-certificates").mkdir()
        for crt in ca_certificates():
            shutil.copy(crt, ctx / "ca-certificates" / crt.name)
        if standin.toolchain is not None:
            standin.toolchain.write_tar(ctx / "rust-toolchain.tar")
        args = [*BUD, "--iidfile", str(ctx / "iid"), "-f", str(standin.containerfile), "-t", ref]
        for k, v in standin.build_args.items():
            args += ["--build-arg", f"{k}={v}"]
        tools.run(args + [str(ctx)], log_name=stem.name)
        image_id = "sha256:" + (ctx / "iid").read_text().strip().removeprefix("sha256:")
    tools.save(ref, archive)
    record = {"ref": ref, "id": image_id, "archive": str(archive), "key": key,
              "build_seconds": round(time.monotonic() - t0), "built": _now()}
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    _prune(stem.parent, f"{_slug(ref)}-", keep=2, logs=tools.logs)
    log(f"stand-in {ref}: {image_id[:19]} in {record['build_seconds']} s")
    return record


# ------------------------------------------------------------------------------- our images
def git_revision(paths: list[str]) -> str:
    """The checkout's commit, with ``-dirty`` when one of ``paths`` differs from it."""
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", *paths],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def buildah_version(tools: Tools) -> str:
    return tools.run(["buildah", "--version"]).strip()


def image_key(image: Image, tag: str, bases: dict[str, dict], build_args: dict[str, str], buildah: str) -> str:
    """Hash of everything the image is built from (the git revision label excepted)."""
    h = hashlib.sha256(f"image {BUILDER_VERSION} {tag} {image.dockerfile}\n{buildah}\n".encode())
    h.update((REPO / image.dockerfile).read_bytes())
    for ref, rec in sorted(bases.items()):
        h.update(f"base {ref} {rec['id']}\n".encode())
    for k, v in sorted(build_args.items()):
        h.update(f"arg {k}={v}\n".encode())
    hash_context(REPO, h)
    return h.hexdigest()[:16]


def ensure_image(tools: Tools, image: Image, tag: str, buildah: str, bases: dict[str, dict]) -> dict:
    """The image's record, built first when its inputs have no archive yet. ``bases`` (the
    stand-ins' records by reference) is filled with the stand-ins it is built on."""
    dockerfile = REPO / image.dockerfile
    for ref in base_images(dockerfile):
        if normalize(ref) not in bases:
            bases[normalize(ref)] = ensure_standin(tools, normalize(ref))
    bases = {normalize(ref): bases[normalize(ref)] for ref in base_images(dockerfile)}
    version = tag.rpartition(":")[2]
    key = image_key(image, tag, bases, {"VERSION": version}, buildah)
    stem = tools.cache / "built" / f"{image.name}-{key}"
    record_path, archive = _with(stem, ".json"), _with(stem, ".tar")
    if record_path.exists() and archive.exists():
        record = json.loads(record_path.read_text())
        tools.ensure_loaded(tag, record["id"], archive)  # podman runs it from the storage
        os.utime(record_path)
        return record
    for ref, rec in bases.items():
        tools.ensure_loaded(ref, rec["id"], Path(rec["archive"]))
    revision = git_revision([image.dockerfile, ".dockerignore", *context_files(REPO)])
    log(f"building {tag} from {image.dockerfile} (inputs {key}, revision {revision})")
    t0 = time.monotonic()
    stem.parent.mkdir(parents=True, exist_ok=True)
    iid = _with(stem, ".iid")
    log_name = stem.name
    before, replaced = tools.all_image_ids(), tools.image_id(tag)
    tools.run([*BUD, "--iidfile", str(iid), "--build-arg", f"VERSION={version}", "--build-arg", f"REVISION={revision}",
               "-f", str(dockerfile), "-t", tag, str(REPO)], log_name=log_name)
    image_id = "sha256:" + iid.read_text().strip().removeprefix("sha256:")
    iid.unlink()
    tools.save(tag, archive)
    tools.drop_stale_layers(image.name, before, tools.logs / f"{log_name}.log", replaced)
    record = {"tag": tag, "id": image_id, "archive": str(archive), "format": "docker-archive",
              "dockerfile": image.dockerfile, "key": key, "revision": revision,
              "base_images": {ref: rec["id"] for ref, rec in bases.items()},
              "size_bytes": archive.stat().st_size, "build_seconds": round(time.monotonic() - t0),
              "built": _now()}
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    _prune(stem.parent, f"{image.name}-", keep=KEEP_BUILDS, logs=tools.logs)
    log(f"{tag}: {image_id[:19]}, {record['size_bytes'] >> 20} MiB, built in {record['build_seconds']} s")
    return record


def _prune(folder: Path, prefix: str, keep: int, logs: Path) -> None:
    """Keep the ``keep`` most recently used records (archives, build logs) starting with ``prefix``."""
    records = sorted(folder.glob(f"{prefix}*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in records[keep:]:
        name = old.name.removesuffix(".json")
        for p in (old, old.with_name(f"{name}.tar"), logs / f"{name}.log"):
            p.unlink(missing_ok=True)


def write_set(cache: Path, records: dict[str, dict], standins: dict[str, dict], tools: Tools) -> Path:
    """The directory handed to consumers: one archive per image (hard links) and images.json.

    images.json::

        {"images": {"<tag>": {"archive": "<file name in this directory>", "format": "docker-archive",
                              "id": "sha256:<config digest>", "dockerfile": ..., "key": ...,
                              "revision": ..., "base_images": {...}, "size_bytes": ...}},
         "standins": {"<base image reference>": {"id": ..., "archive": "<absolute path in the cache>"}},
         "storage_conf": "<CONTAINERS_STORAGE_CONF for podman/buildah>",
         "registries_conf": "<CONTAINERS_REGISTRIES_CONF>", "containers_conf": "<CONTAINERS_CONF>"}
    """
    key = hashlib.sha256(json.dumps([SET_FORMAT, sorted((t, r["key"]) for t, r in records.items())]).encode())
    key = key.hexdigest()[:16]
    out = cache / "sets" / key
    if not (out / "images.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent))
        doc = {"images": {}, "standins": {ref: {"id": rec["id"], "archive": rec["archive"]}
                                          for ref, rec in sorted(standins.items())},
               "storage_conf": str(tools.storage_conf), "registries_conf": str(tools.registries_conf),
               "containers_conf": str(tools.containers_conf)}
        for tag, rec in records.items():
            name = Path(rec["archive"]).name.rsplit("-", 1)[0] + ".tar"
            os.link(rec["archive"], tmp / name)
            doc["images"][tag] = dict(rec, archive=name)
        (tmp / "images.json").write_text(json.dumps(doc, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    os.utime(out)
    sets = sorted((p for p in (cache / "sets").iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in sets[KEEP_BUILDS:]:
        shutil.rmtree(old, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.parse_args(argv)
    cache = Path(os.environ.get("DATASETPREP_TESTBED_CACHE") or Path.home() / ".cache/datasetprep-testbed") / "images"
    cache.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        log("needs root (debootstrap, and buildah's chroot isolation as root); run it as root")
        return 1
    t0 = time.monotonic()
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per cache (parallel sessions, CI retries)
        try:
            tools = Tools(cache)
            tools.drop_leftovers()
            buildah = buildah_version(tools)
            tags = chart_images()
            records, standins = {}, {}
            for image in IMAGES:
                tag = tags[image.chart_key]
                records[tag] = ensure_image(tools, image, tag, buildah, standins)
            out = write_set(cache, records, standins, tools)
        except BuildError as e:
            log(str(e))
            return 1
    log(f"ready in {time.monotonic() - t0:.0f} s")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
