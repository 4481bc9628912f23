"""The DatasetPrep operator: a kopf control plane that runs ``datasetprep job`` as Kubernetes Jobs.

Layers (each imports only the ones below it):

* ``handlers``  -- kopf registration only: decorated entry points that unpack kwargs.
* ``cli``       -- ``run(...)``, the programmatic start used by ``datasetprep operator``.
* ``reconcile`` -- the level-triggered logic: what to create, what to record in status.
* ``kube``      -- the few Kubernetes API calls, behind one small class.
* ``builders``  -- pure functions returning manifests, ConfigMap data and status fragments.
* ``config``, ``metrics``, ``crdgen`` -- settings, Prometheus metrics, the CRD generator.
"""

__version__ = "0.1.0"
