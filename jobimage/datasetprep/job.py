"""The Job pod entrypoint (``datasetprep job``).

The operator hands the work order over in the environment:

* ``DATASETPREP_SPEC``: the DatasetPrep spec as JSON (camelCase; it holds no secret);
* ``DATASETPREP_VOLUMES``: JSON object claim name → mount path;
* ``HF_TOKEN``: only through ``secretKeyRef`` (or ``HF_TOKEN_FILE``), never a literal.

The result goes to the termination message (``/dev/termination-log``, or
``DATASETPREP_TERMINATION_LOG``) as compact JSON, which the operator reads from the pod status:
``{"ok": true, "outputs": [...], "tokenizer": {...}, "fingerprint": ..., "resolved_revision": ...}`` or
``{"ok": false, "error": "<message for users>"}`` with exit code 1.  Kubernetes keeps at most
4096 bytes of it, so it stays compact.
"""
from __future__ import annotations

import json
import logging
import os
import sys

from . import progress as progress_mod
from .errors import user_message
from .runner import run_spec
from .spec import format_validation_error, parse_spec

TERMINATION_LOG = "/dev/termination-log"
MAX_MESSAGE = 4000


def _termination_path() -> str:
    return os.environ.get("DATASETPREP_TERMINATION_LOG", TERMINATION_LOG)


def write_termination(doc: dict) -> None:
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    if len(text) > MAX_MESSAGE and doc.get("ok"):
        # Kubernetes keeps 4 KiB: drop what the operator can do without, least useful first (the
        # blend weights stay in the blend list file on the volume)
        doc = dict(doc, outputs=[dict(o) for o in doc.get("outputs", [])])
        for field in ("idx_sha256", "bin_sha256", "blend_weights"):
            for o in doc["outputs"]:
                o.pop(field, None)
            text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
            if len(text) <= MAX_MESSAGE:
                break
        else:
            doc = {"ok": False, "error": "the job's result does not fit in a termination message (too many text keys?)"}
            text = json.dumps(doc, separators=(",", ":"))
    elif len(text) > MAX_MESSAGE:
        doc = {"ok": False, "error": doc.get("error", "")[: MAX_MESSAGE - 40]}
        text = json.dumps(doc, separators=(",", ":"))
    try:
        with open(_termination_path(), "w", encoding="utf-8") as f:
            f.write(text)
    except OSError:
        pass  # not in a pod (or no termination log): stdout still has it
    print(f"result: {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    log = logging.getLogger("datasetprep.job")
    token = None
    try:
        raw = os.environ.get("DATASETPREP_SPEC")
        if not raw:
            raise ValueError("DATASETPREP_SPEC is not set: the operator passes the spec as JSON in it")
        try:
            spec = parse_spec(json.loads(raw))
        except json.JSONDecodeError as e:
            raise ValueError(f"DATASETPREP_SPEC is not valid JSON ({e.msg})") from None
        volumes = json.loads(os.environ.get("DATASETPREP_VOLUMES") or "{}")
        if not volumes:
            volumes = {spec.output.claim_name: spec.output.mount_path}
        from . import hub

        token = hub.token_from_env()
        if token:
            hub.install_token_redaction(token)
        if argv and "--delete-data" in argv:  # the operator's clean-up when the DatasetPrep is deleted
            from .runner import delete_output

            write_termination(delete_output(spec, volumes, log=log.info))
            return 0
        mode, index = "all", None
        if argv and "--merge" in argv:
            mode = "merge"
        elif spec.shards > 1:
            raw_index = os.environ.get("JOB_COMPLETION_INDEX")
            if raw_index is None:
                raise ValueError("spec.shards > 1 but JOB_COMPLETION_INDEX is not set: shard pods run in an "
                                 "Indexed Job (completionMode: Indexed)")
            mode, index = "shard", int(raw_index)
        reporter = progress_mod.PodProgress.from_env(progress_mod.PlainProgress(sys.stdout, interval=5.0),
                                                     shard=index)
        result = run_spec(spec, volumes, token=token, overwrite=True, progress=reporter, log=log.info,
                          mode=mode, shard_index=index)
        result.pop("manifest", None)
        write_termination(result)
        return 0
    except Exception as e:  # every failure ends as a message for the user, not a traceback
        msg = format_validation_error(e) if e.__class__.__name__ == "ValidationError" else user_message(e)
        if token:
            msg = msg.replace(token, "***")
        log.error("%s", msg)
        write_termination({"ok": False, "error": msg})
        return 1
