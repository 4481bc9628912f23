"""The test bed's NetworkPolicy enforcer: kube-router's firewall, inside the bed.

The bed's CNI (a plain bridge) stores NetworkPolicies and does nothing with them. kube-router
(``./kube-router``, built by ``./build``) run with only its firewall (``--run-firewall=true
--run-router=false --run-service-proxy=false``) turns them into iptables rules and ipsets,
as it does on clusters whose bridge CNI lacks a policy engine: every local pod gets a chain
(``KUBE-POD-FW-*``) that traffic from and to its address jumps to from ``INPUT``, ``FORWARD``
(routed and bridged) and ``OUTPUT``; what no policy allows is REJECTed.

It runs in the bed's namespaces like every node component (its rules live in the bed's own
network namespace; the host's are never touched), and only while a test asks for it
(``testbed.py netpol on|off``, ``KubeCluster.network_policy_enforcer()``): ``off`` stops it and
removes its chains and ipsets, so the other tests run on the plain bridge, as before. (Not with
``kube-router --cleanup-config``: in v2.1.0 it panics in the service proxy's clean-up, a nil
pointer in ``deleteHairpinIptablesRules``, after leaving the firewall's top-level chains.)

Like most enforcers, kube-router lets the node itself reach its pods (the kubelet's probes):
traffic from an address of the bed's network namespace to a pod is always accepted.

Standard library only (``testbed.py`` runs before the test dependencies are installed).
"""
from __future__ import annotations

import re

NAME = "kube-router"
HEALTH_PORT = 20244
#: chains kube-router creates in the filter table (top level, per policy, per pod)
CHAIN_PREFIXES = ("KUBE-ROUTER-", "KUBE-NWPLCY-", "KUBE-POD-FW-")
#: ipsets of its policies (source/destination pods and CIDRs)
IPSET_PREFIXES = ("KUBE-SRC-", "KUBE-DST-", "TMP-")


def argv(binary: str, kubeconfig: str, node_name: str, service_cidr: str) -> list[str]:
    """kube-router with its NetworkPolicy firewall only."""
    return [binary, f"--kubeconfig={kubeconfig}", f"--hostname-override={node_name}",
            "--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
            f"--service-cluster-ip-range={service_cidr}", f"--health-port={HEALTH_PORT}", "--metrics-port=0",
            # events trigger syncs; the periodic full sync only repairs drift
            "--iptables-sync-period=1m", "--v=1"]


def synced(filter_rules: str) -> bool:
    """kube-router's top-level chains are in place and hooked into the built-in ones."""
    return all(f"-A {builtin} -m comment --comment \"kube-router netpol" in filter_rules
               for builtin in ("INPUT", "FORWARD", "OUTPUT"))


def leftovers(filter_rules: str, ipsets: str) -> list[str]:
    """Chains and ipsets of kube-router still present (``iptables-save -t filter``, ``ipset list -n``)."""
    chains = [line for line in filter_rules.splitlines()
              if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES)]
    sets = [name for name in ipsets.split() if name.startswith(IPSET_PREFIXES)]
    return chains + sets


def cleanup_script(filter_rules: str) -> str:
    """``iptables-restore --noflush`` input that removes kube-router's chains from the filter table:
    flush them, delete the jumps to them from the built-in chains, delete them."""
    chains = [line[1:].split()[0] for line in filter_rules.splitlines()
              if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES)]
    jumps = [line for line in filter_rules.splitlines()
             if line.startswith(("-A INPUT ", "-A FORWARD ", "-A OUTPUT ")) and " -j KUBE-ROUTER-" in line]
    lines = ["*filter", *(f":{c} - [0:0]" for c in chains), *("-D" + j[2:] for j in jumps),
             *(f"-X {c}" for c in chains), "COMMIT", ""]
    return "\n".join(lines)


def pod_policies(filter_rules: str, namespace: str, pod: str) -> set[str] | None:
    """Names of the NetworkPolicies kube-router applies to a pod, read from its rules; None when it
    has no chain for the pod yet (its pods and policies are synced a moment after they change)."""
    marker = f"POD name:{pod} namespace: {namespace} "
    chains = {m.group(1) for line in filter_rules.splitlines()
              if line.startswith("-A KUBE-ROUTER-") and marker in line
              for m in [re.search(r" -j (KUBE-POD-FW-\S+)", line)] if m}
    if not chains:
        return None
    policy = re.compile(r'--comment "run through nw policy (\S+)"')
    names = set()
    for line in filter_rules.splitlines():
        words = line.split(" ", 2)
        if words[0] == "-A" and len(words) > 2 and words[1] in chains and (m := policy.search(line)):
            names.add(m.group(1))
    return names
