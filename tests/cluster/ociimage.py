"""OCI image archives for the test bed's node, without a registry or an image builder.

* :func:`write_single_binary_image` makes a one-layer image holding one static binary (the
  sandbox image from ``tools/pause``, the test image from ``tools/testbox``). The archive is
  an OCI image layout in a tar (``oci-layout``, ``index.json``, ``blobs/sha256/...``) whose
  index names the image with ``io.containerd.image.name``, so ``ctr images import`` tags it
  without further options. Bytes are deterministic (fixed mtimes/owners), so an unchanged
  binary gives an unchanged image id.
* :func:`archive_images` reads back what an archive holds (name -> image id = config digest),
  for OCI layouts (``index.json``) and docker archives (``manifest.json``, what
  ``podman save`` writes by default), so already-imported images can be skipped.

Standard library only: ``testbed.py`` must run before the test dependencies are installed.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tarinfo(name: str, size: int = 0, mode: int = 0o755, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.type, ti.mtime = size, mode, kind, 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def _layer(binary: Path, dest: str, dirs: tuple[str, ...]) -> bytes:
    buf = io.BytesIO()
    data = binary.read_bytes()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            tar.addfile(_tarinfo(d.strip("/") + "/", mode=0o1777 if d == "/tmp" else 0o755, kind=tarfile.DIRTYPE))
        tar.addfile(_tarinfo(dest.lstrip("/"), size=len(data)), io.BytesIO(data))
    return buf.getvalue()


def _blob(blobs: dict[str, bytes], data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest


def write_single_binary_image(binary: Path, name: str, out: Path, entrypoint: str,
                              dirs: tuple[str, ...] = ("/tmp",)) -> str:
    """Write an OCI archive at ``out`` with ``binary`` at ``entrypoint`` as the only file (plus
    empty ``dirs``); the image is named ``name`` (a full reference). Returns the image id."""
    blobs: dict[str, bytes] = {}
    layer = _layer(binary, entrypoint, dirs)
    layer_digest = _blob(blobs, layer)
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": [entrypoint], "Env": ["PATH=/"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},  # uncompressed: digest == diff id
        "history": [{"created_by": f"tests/cluster/ociimage.py: {binary.name} at {entrypoint}"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = _blob(blobs, config_bytes)
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest = _blob(blobs, manifest_bytes)
    index = {
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest_bytes),
                       "platform": {"architecture": "amd64", "os": "linux"},
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}}],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for fname, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                            ("index.json", json.dumps(index, sort_keys=True).encode())] + \
                [(f"blobs/sha256/{d.split(':', 1)[1]}", b) for d, b in sorted(blobs.items())]:
            tar.addfile(_tarinfo(fname, size=len(data), mode=0o644), io.BytesIO(data))
    tmp.replace(out)
    return config_digest


# ------------------------------------------------------------------------------ reading


def _config_of_manifest(read, manifest: dict) -> str | None:
    if manifest.get("mediaType") in (OCI_INDEX, DOCKER_LIST) or "manifests" in manifest:
        for m in manifest.get("manifests", []):
            plat = m.get("platform") or {}
            if plat.get("architecture", "amd64") == "amd64" and plat.get("os", "linux") == "linux":
                return _config_of_manifest(read, json.loads(read(m["digest"])))
        return None
    return (manifest.get("config") or {}).get("digest")


def archive_images(archive: Path) -> dict[str, str]:
    """Image names in an OCI or docker archive -> image id (config digest). Names are those
    ``ctr images import`` gives them: ``io.containerd.image.name``, else an
    ``org.opencontainers.image.ref.name`` that is a full reference, else docker ``RepoTags``."""
    with tarfile.open(archive) as tar:
        members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}

        def read_path(path: str) -> bytes:
            f = tar.extractfile(members[path.lstrip("./")])
            assert f is not None
            return f.read()

        def read_digest(digest: str) -> bytes:
            return read_path("blobs/" + digest.replace(":", "/", 1))

        found: dict[str, str] = {}
        if "index.json" in members:
            for desc in json.loads(read_path("index.json")).get("manifests", []):
                ann = desc.get("annotations") or {}
                name = ann.get("io.containerd.image.name") or ann.get("org.opencontainers.image.ref.name")
                if not name or ("/" not in name and ":" not in name):
                    continue
                cfg = _config_of_manifest(read_digest, json.loads(read_digest(desc["digest"])))
                if cfg:
                    found[name] = cfg
        if not found and "manifest.json" in members:
            for entry in json.loads(read_path("manifest.json")):
                cfg_path = entry["Config"]
                cfg = "sha256:" + hashlib.sha256(read_path(cfg_path)).hexdigest()
                for tag in entry.get("RepoTags") or []:
                    found[_normalize(tag)] = cfg
        return found


def _normalize(ref: str) -> str:
    """Docker short names as containerd stores them (busybox:1 -> docker.io/library/busybox:1)."""
    first = ref.split("/", 1)[0]
    if "/" not in ref:
        return f"docker.io/library/{ref}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{ref}"
    return ref
