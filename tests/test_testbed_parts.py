"""Parts of the test bed that need no cluster: image archives, bed naming, images.json."""
from __future__ import annotations

import importlib.util
import ipaddress
import json
import sys
import tarfile
from pathlib import Path

import pytest

CLUSTER_DIR = Path(__file__).resolve().parent / "cluster"


def _load(name: str):
    if name not in sys.modules:
        sys.path.insert(0, str(CLUSTER_DIR))  # nodebed imports its sibling ociimage
        try:
            spec = importlib.util.spec_from_file_location(name, CLUSTER_DIR / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        finally:
            sys.path.remove(str(CLUSTER_DIR))
    return sys.modules[name]


ociimage = _load("ociimage")
nodebed = _load("nodebed")
netpol = _load("netpol")


def test_single_binary_image_archive_is_deterministic_and_named(tmp_path):
    binary = tmp_path / "tool"
    binary.write_bytes(b"\x7fELF not really")
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    id_a = ociimage.write_single_binary_image(binary, "testbed.local/tool:1", a, "/tool")
    id_b = ociimage.write_single_binary_image(binary, "testbed.local/tool:1", b, "/tool")
    assert a.read_bytes() == b.read_bytes() and id_a == id_b
    assert ociimage.archive_images(a) == {"testbed.local/tool:1": id_a}
    with tarfile.open(a) as tar:
        index = json.loads(tar.extractfile("index.json").read())
        manifest = json.loads(tar.extractfile("blobs/" + index["manifests"][0]["digest"].replace(":", "/")).read())
        config = json.loads(tar.extractfile("blobs/" + id_a.replace(":", "/")).read())
        layer = tar.extractfile("blobs/" + manifest["layers"][0]["digest"].replace(":", "/")).read()
    assert config["config"]["Entrypoint"] == ["/tool"]
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]
    import io

    with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
        assert inner.extractfile("tool").read() == binary.read_bytes()
        assert inner.getmember("tmp").mode == 0o1777


def test_docker_archive_names_and_ids(tmp_path):
    """`podman save` (docker-archive) names images by RepoTags; ids are config digests."""
    import hashlib
    import io

    cfg = b'{"config":{}}'
    arc = tmp_path / "d.tar"
    with tarfile.open(arc, "w") as tar:
        for name, data in (("abc.json", cfg),
                           ("manifest.json", json.dumps([{"Config": "abc.json", "Layers": [],
                                                          "RepoTags": ["ghcr.io/x/y:1", "busybox:1"]}]).encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    want = "sha256:" + hashlib.sha256(cfg).hexdigest()
    assert ociimage.archive_images(arc) == {"ghcr.io/x/y:1": want, "docker.io/library/busybox:1": want}


def test_bed_names_and_links_differ_per_state_dir_and_avoid_host_networks(tmp_path):
    a = nodebed.BedIdentity.derive(tmp_path / "a")
    b = nodebed.BedIdentity.derive(tmp_path / "b")
    assert a.bed_id != b.bed_id and a.veth != b.veth and a.cgroup_root != b.cgroup_root
    assert len(a.veth) <= 15  # IFNAMSIZ - 1
    link = ipaddress.ip_network(f"{a.host_ip}/30", strict=False)
    assert ipaddress.ip_address(a.node_ip) in link and link.subnet_of(nodebed.LINK_POOL)
    assert nodebed.BedIdentity.derive(tmp_path / "a") == a  # stable
    moved = nodebed.BedIdentity.derive(tmp_path / "a", taken=[link])
    assert moved.bed_id == a.bed_id and moved.host_ip != a.host_ip
    assert not ipaddress.ip_network(f"{moved.host_ip}/30", strict=False).overlaps(link)


def test_paths_under_a_covered_folder_are_bound_back():
    """A checkout or state dir under /var/lib or /run (a CI runner's folder) is bound back over the
    bed's tmpfs; nested paths once; the covered folder itself cannot be."""
    keep = nodebed.covered_paths([Path("/var/lib/ci/repo"), Path("/var/lib/ci/repo/tests/cluster/.state"),
                                  Path("/tmp/x"), Path("/var/library"), Path("/run/user/0/a b")])
    assert keep == [Path("/run/user/0/a b"), Path("/var/lib/ci/repo")]
    with pytest.raises(RuntimeError, match="DATASETPREP_TESTBED_STATE"):
        nodebed.covered_paths([Path("/var/lib")])
    script = nodebed.holder_script(Path("/c/pause"), keep)
    assert "mount --rbind /var/lib \"$hold\"/var/lib" in script
    assert "mount --rbind \"$hold\"/var/lib/ci/repo /var/lib/ci/repo" in script
    assert "\"$hold\"'/run/user/0/a b' '/run/user/0/a b'" in script
    assert "rm " not in script  # only rmdir: nothing of the host's can be deleted
    assert nodebed.holder_script(Path("/c/pause"), []).count("mount") == 3


@pytest.mark.parametrize("doc", [
    ["job.tar"],
    {"images": [{"archive": "job.tar", "name": "ghcr.io/datasetprep/datasetprep-job:0.1.0"}]},
    {"ghcr.io/datasetprep/datasetprep-job:0.1.0": {"file": "job.tar"}},
])
def test_images_json_forms(tmp_path, doc):
    (tmp_path / "job.tar").write_bytes(b"")
    (tmp_path / "images.json").write_text(json.dumps(doc))
    assert nodebed.listed_archives(tmp_path) == [tmp_path / "job.tar"]


def test_images_json_errors_name_the_problem(tmp_path):
    with pytest.raises(RuntimeError, match="cannot read .*images.json"):
        nodebed.listed_archives(tmp_path)
    (tmp_path / "images.json").write_text('["missing.tar"]')
    with pytest.raises(RuntimeError, match="lists missing.tar, which is not a file"):
        nodebed.listed_archives(tmp_path)
    (tmp_path / "images.json").write_text('[{"name": "x"}]')
    with pytest.raises(RuntimeError, match="names no archive"):
        nodebed.listed_archives(tmp_path)


# What kube-router v2.1.0 wrote in a bed (`iptables-save -t filter`, kube-proxy's own chains trimmed) for
# the pod cap/web, selected by the NetworkPolicy deny-in.
KUBE_ROUTER_RULES = r"""
*filter
:INPUT ACCEPT [273:107248]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [273:107248]
:KUBE-FIREWALL - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-NWPLCY-DEFAULT - [0:0]
:KUBE-NWPLCY-GFZRKABMGSJ2BE32 - [0:0]
:KUBE-POD-FW-ZAYMICIXFG2SYCE4 - [0:0]
:KUBE-ROUTER-FORWARD - [0:0]
:KUBE-ROUTER-INPUT - [0:0]
:KUBE-ROUTER-OUTPUT - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-INPUT
-A INPUT -j KUBE-FIREWALL
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A FORWARD -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T" -j KUBE-ROUTER-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kube-router netpol - VEAAIY32XVBHCSCY" -j KUBE-ROUTER-OUTPUT
-A OUTPUT -j KUBE-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-NWPLCY-DEFAULT -m comment --comment "rule to mark traffic matching a network policy" -j MARK --set-xmark 0x10000/0x10000
-A KUBE-NWPLCY-GFZRKABMGSJ2BE32 -p udp -m comment --comment "rule to ACCEPT traffic from source pods to all destinations selected by policy name: deny-in namespace cap" -m set --match-set KUBE-SRC-SYXLB3LK7PUJQR5I src -m udp --dport 53 -j MARK --set-xmark 0x10000/0x10000
-A KUBE-NWPLCY-GFZRKABMGSJ2BE32 -p udp -m comment --comment "rule to ACCEPT traffic from source pods to all destinations selected by policy name: deny-in namespace cap" -m set --match-set KUBE-SRC-SYXLB3LK7PUJQR5I src -m udp --dport 53 -m mark --mark 0x10000/0x10000 -j RETURN
-A KUBE-POD-FW-ZAYMICIXFG2SYCE4 -m comment --comment "rule for stateful firewall for pod" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-POD-FW-ZAYMICIXFG2SYCE4 -m comment --comment "rule to drop invalid state for pod" -m conntrack --ctstate INVALID -j DROP
-A KUBE-POD-FW-ZAYMICIXFG2SYCE4 -d 10.244.0.20/32 -m comment --comment "rule to permit the traffic traffic to pods when source is the pod\'s local node" -m addrtype --src-type LOCAL -j ACCEPT
-A KUBE-POD-FW-ZAYMICIXFG2SYCE4 -m comment --comment "run through nw policy deny-in" -j KUBE-NWPLCY-GFZRKABMGSJ2BE32
-A KUBE-POD-FW-ZAYMICIXFG2SYCE4 -m comment --comment "rule to log dropped traffic POD name:web namespace: cap" -m mark ! --mark 0x10000/0x10000 -m limit --limit 10/min --limit-burst 10 -j NFLOG --nflog-group 100
-A KUBE-POD-FW-ZAYMICIXFG2SYCE4 -m comment --comment "rule to REJECT traffic destined for POD name:web namespace: cap" -m mark ! --mark 0x10000/0x10000 -j REJECT --reject-with icmp-port-unreachable
-A KUBE-POD-FW-ZAYMICIXFG2SYCE4 -j MARK --set-xmark 0x0/0x10000
-A KUBE-POD-FW-ZAYMICIXFG2SYCE4 -m comment --comment "set mark to ACCEPT traffic that comply to network policies" -j MARK --set-xmark 0x20000/0x20000
-A KUBE-ROUTER-FORWARD -d 10.244.0.20/32 -m comment --comment "rule to jump traffic destined to POD name:web namespace: cap to chain KUBE-POD-FW-ZAYMICIXFG2SYCE4" -j KUBE-POD-FW-ZAYMICIXFG2SYCE4
-A KUBE-ROUTER-FORWARD -d 10.244.0.20/32 -m physdev --physdev-is-bridged -m comment --comment "rule to jump traffic destined to POD name:web namespace: cap to chain KUBE-POD-FW-ZAYMICIXFG2SYCE4" -j KUBE-POD-FW-ZAYMICIXFG2SYCE4
-A KUBE-ROUTER-FORWARD -s 10.244.0.20/32 -m comment --comment "rule to jump traffic from POD name:web namespace: cap to chain KUBE-POD-FW-ZAYMICIXFG2SYCE4" -j KUBE-POD-FW-ZAYMICIXFG2SYCE4
-A KUBE-ROUTER-FORWARD -s 10.244.0.20/32 -m physdev --physdev-is-bridged -m comment --comment "rule to jump traffic from POD name:web namespace: cap to chain KUBE-POD-FW-ZAYMICIXFG2SYCE4" -j KUBE-POD-FW-ZAYMICIXFG2SYCE4
-A KUBE-ROUTER-FORWARD -m comment --comment "rule to explicitly ACCEPT traffic that comply to network policies" -m mark --mark 0x20000/0x20000 -j ACCEPT
-A KUBE-ROUTER-INPUT -d 10.0.0.0/24 -m comment --comment "allow traffic to primary/secondary cluster IP range - JASKH4CITPJP7Y2X" -j RETURN
-A KUBE-ROUTER-INPUT -p tcp -m comment --comment "allow LOCAL TCP traffic to node ports - LR7XO7NXDBGQJD2M" -m addrtype --dst-type LOCAL -m multiport --dports 30000:32767 -j RETURN
-A KUBE-ROUTER-INPUT -p udp -m comment --comment "allow LOCAL UDP traffic to node ports - 76UCBPIZNGJNWNUZ" -m addrtype --dst-type LOCAL -m multiport --dports 30000:32767 -j RETURN
-A KUBE-ROUTER-INPUT -s 10.244.0.20/32 -m comment --comment "rule to jump traffic from POD name:web namespace: cap to chain KUBE-POD-FW-ZAYMICIXFG2SYCE4" -j KUBE-POD-FW-ZAYMICIXFG2SYCE4
-A KUBE-ROUTER-INPUT -m comment --comment "rule to explicitly ACCEPT traffic that comply to network policies" -m mark --mark 0x20000/0x20000 -j ACCEPT
-A KUBE-ROUTER-OUTPUT -d 10.244.0.20/32 -m comment --comment "rule to jump traffic destined to POD name:web namespace: cap to chain KUBE-POD-FW-ZAYMICIXFG2SYCE4" -j KUBE-POD-FW-ZAYMICIXFG2SYCE4
-A KUBE-ROUTER-OUTPUT -s 10.244.0.20/32 -m comment --comment "rule to jump traffic from POD name:web namespace: cap to chain KUBE-POD-FW-ZAYMICIXFG2SYCE4" -j KUBE-POD-FW-ZAYMICIXFG2SYCE4
-A KUBE-ROUTER-OUTPUT -m comment --comment "rule to explicitly ACCEPT traffic that comply to network policies" -m mark --mark 0x20000/0x20000 -j ACCEPT
COMMIT
"""


def test_enforcer_rules_name_each_pods_policies():
    assert netpol.synced(KUBE_ROUTER_RULES)
    assert not netpol.synced(KUBE_ROUTER_RULES.replace("-A FORWARD -m comment --comment \"kube-router", "-A FORWARD x"))
    assert netpol.pod_policies(KUBE_ROUTER_RULES, "cap", "web") == {"deny-in"}
    assert netpol.pod_policies(KUBE_ROUTER_RULES, "cap", "we") is None  # not a prefix match
    assert netpol.pod_policies(KUBE_ROUTER_RULES, "ca", "web") is None
    unselected = KUBE_ROUTER_RULES.replace('--comment "run through nw policy deny-in"', '--comment "x"')
    assert netpol.pod_policies(unselected, "cap", "web") == set()  # a chain of its own, no policy


def test_enforcer_clean_up_removes_its_chains_and_sets_only():
    script = netpol.cleanup_script(KUBE_ROUTER_RULES)
    ours = ["KUBE-NWPLCY-DEFAULT", "KUBE-NWPLCY-GFZRKABMGSJ2BE32", "KUBE-POD-FW-ZAYMICIXFG2SYCE4",
            "KUBE-ROUTER-FORWARD", "KUBE-ROUTER-INPUT", "KUBE-ROUTER-OUTPUT"]
    assert [line for line in script.splitlines() if line.startswith("-X ")] == [f"-X {c}" for c in ours]
    assert [line for line in script.splitlines() if line.startswith(":")] == [f":{c} - [0:0]" for c in ours]
    assert '-D INPUT -m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-INPUT' in script
    assert len([line for line in script.splitlines() if line.startswith("-D ")]) == 3
    assert "KUBE-SERVICES" not in script and "KUBE-FIREWALL" not in script  # kube-proxy's stay
    assert script.startswith("*filter\n") and script.endswith("COMMIT\n")
    left = netpol.leftovers(KUBE_ROUTER_RULES, "KUBE-SRC-SYXLB3LK7PUJQR5I\nKUBE-DST-SYXLB3LK7PUJQR5I\nother\n")
    assert left == [f":{c} - [0:0]" for c in ours] + ["KUBE-SRC-SYXLB3LK7PUJQR5I", "KUBE-DST-SYXLB3LK7PUJQR5I"]
    assert netpol.leftovers("*filter\n:KUBE-SERVICES - [0:0]\nCOMMIT\n", "other\n") == []
