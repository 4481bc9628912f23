"""The DatasetPrep operator: a kopf control plane that runs ``datasetprep job`` as Kubernetes Jobs.

Layers (each imports only the ones below it; ``.importlinter`` keeps them):

* ``handlers``  -- kopf registration only: decorated entry points that unpack kwargs.
* ``cli``       -- ``run(...)``, the programmatic start used by ``datasetprep operator``.
* ``runtime``   -- kopf's kwargs in, the reconciler's outcome out (status patch, events, retries).
* ``deletion``, ``reconcile`` -- the level-triggered logic: what to create, what to record in status.
* ``kube``      -- the few Kubernetes API calls, behind one small class.
* pure functions, no API calls: ``jobs`` (Job manifests), ``trainingconfig`` (the ConfigMap),
  ``status`` (status through its model), ``results`` (the job's results), ``jobstate`` (what a Job and
  its pods say), ``naming`` (names and labels).
* ``config``, ``metrics``, ``crdgen`` -- settings, Prometheus metrics, the CRD generator.

Below all of them, from the ``datasetprep`` package: ``spec`` (the one spec model), ``contract``
(what the operator and the job hand each other) and ``hashes`` -- never the data plane.
"""

__version__ = "0.1.0"
