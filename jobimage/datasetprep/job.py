"""The Job pod entrypoint (``datasetprep job``).

The operator hands the work order over in the environment (:class:`~datasetprep.contract.JobInputs`:
the spec, the volumes, the run plan; the token only through ``secretKeyRef``); the data plane's
settings are read here too (:class:`~datasetprep.settings.Settings`), once. The result goes to the
termination message as :func:`~datasetprep.contract.encode_result` writes it, which the operator
reads from the pod status; a failure also exits non-zero: :data:`~datasetprep.contract.EXIT_PERMANENT`
when the error is permanent (the Job's ``podFailurePolicy`` then stops retrying), 143 when stopped by
SIGTERM, else 1. Every field of both is defined in :mod:`datasetprep.contract`.
"""
from __future__ import annotations

import logging
import os
import socket
import sys

from . import progress, signals
from .contract import TERMINATION_MESSAGE_PATH, BlendOrder, Failed, JobInputs, JobResult, encode_result, exit_code
from .errors import failure
from .runner import delete_output, run_spec
from .settings import JOB_LOCK_WAIT, Settings, read_token
from .volumes import Volumes
from .writable import folders_to_write, require_writable


def write_termination(result: JobResult, path: str = TERMINATION_MESSAGE_PATH) -> None:
    """Write the result where Kubernetes reads the termination message, and to stdout."""
    text = encode_result(result)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError:
        pass  # not in a pod (or no termination log): stdout still has it
    print(f"result: {text}", flush=True)


TERMINATED = ("stopped by SIGTERM (the pod was deleted, evicted or preempted) before it finished; nothing was "
              "published, and a rerun resumes the chunks already done")


def main() -> int:
    """``datasetprep job``. Started as PID 1 (the container's first process: no shell runs before
    it), it forks and stays as a small init: it forwards the stop signals and reaps every process
    (``signals.supervise``); the child does the work."""
    if os.getpid() == 1:
        return signals.supervise(_main)
    return _main()


def _main() -> int:
    signals.install()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    log = logging.getLogger("datasetprep.job")
    token = None
    termination_log = TERMINATION_MESSAGE_PATH
    try:
        settings = Settings.from_env(os.environ, lock_wait=JOB_LOCK_WAIT)
        termination_log = settings.termination_log
        blend = BlendOrder.from_env(os.environ)
        if blend is not None:  # a DatasetBlend's files Job: no DatasetPrep, no token
            from .blendjob import write_blend

            write_termination(write_blend(blend, log=log.info, lock_wait=settings.lock_wait), termination_log)
            return 0
        inputs = JobInputs.from_env(os.environ)
        if inputs.plan.step != "delete":  # a volume the job may not write to fails now, with the fix
            vols = Volumes(inputs.spec, inputs.volumes)
            require_writable(folders_to_write(inputs.spec, vols, downloads=True), claim=inputs.spec.output.claim_name,
                             root=vols.output_root)
        token = read_token(os.environ)
        if token:
            from .hub import install_token_redaction

            install_token_redaction(token)
        who = (f"datasetprep job (pod {socket.gethostname()}, DatasetPrep {inputs.namespace or '?'}/"
               f"{inputs.name or '?'}, step {inputs.plan.step})")
        if inputs.plan.step == "delete":  # the operator's clean-up when the DatasetPrep is deleted
            write_termination(delete_output(inputs.spec, inputs.volumes, log=log.info, lock_wait=settings.lock_wait,
                                            who=who), termination_log)
            return 0
        reporter = progress.LogProgress(progress.PlainProgress(sys.stdout, interval=5.0), sys.stdout,
                                        shard=inputs.plan.index)
        result = run_spec(inputs.spec, inputs.volumes, plan=inputs.plan, settings=settings, token=token,
                          overwrite=True, progress=reporter, log=log.info, who=who)
        write_termination(result, termination_log)
        return 0
    except signals.Terminated:
        log.error("%s", TERMINATED)
        write_termination(Failed(error=TERMINATED, kind="transient"), termination_log)
        return signals.EXIT_TERMINATED
    except Exception as e:  # every failure ends as a message for the user, not a traceback
        result = failure(e, secret=token)
        log.error("%s", result.error)
        write_termination(result, termination_log)
        return exit_code(result.kind)
