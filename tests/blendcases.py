"""DatasetBlend manifests that go through pydantic (test_blend_crd.py) and through the API server
(test_blend_crd_cluster.py): both must accept or both reject, for the same reason."""
from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from datasetprep.blendspec import parse_blend_spec
from datasetprep.spec import format_validation_error

WEIGHTS = {"components": [{"datasetPrep": "wiki", "weight": 3}, {"datasetPrep": "code", "weight": 1}]}
FRACTIONS = {"components": [{"datasetPrep": "wiki", "fraction": 0.7}, {"datasetPrep": "code", "fraction": 0.2},
                            {"datasetPrep": "math", "fraction": 0.1}], "totalTokens": 2_000_000_000_000}
PER_SPLIT = {"perSplit": {"train": [{"datasetPrep": "wiki", "weight": 1}, {"datasetPrep": "code", "weight": 1}],
                          "valid": [{"datasetPrep": "wiki-valid", "weight": 1}]}}


def with_(base: dict, **changes: Any) -> dict:
    data = copy.deepcopy(base)
    data.update(changes)
    return data


def comps(*items: dict) -> dict:
    return {"components": list(items)}


BLEND_CASES: list[tuple[str, dict, str | None, str | None]] = [
    ("valid-weights", WEIGHTS, None, None),
    ("valid-fractions-float-sum", FRACTIONS, None, None),  # 0.7 + 0.2 + 0.1 != 1.0 in floats
    ("valid-per-split", PER_SPLIT, None, None),
    ("valid-splits", with_(WEIGHTS, splits="98,2"), None, None),
    ("valid-splits-spaces", with_(WEIGHTS, splits="969, 30, 1"), None, None),
    ("valid-text-keys", comps({"datasetPrep": "wiki", "textKey": "text", "weight": 1},
                              {"datasetPrep": "wiki", "textKey": "title", "weight": 1}), None, None),
    ("valid-budget-with-weights", with_(WEIGHTS, totalTokens=10**12, maxEpochs=2.5), None, None),
    ("valid-integer-fraction", with_(comps({"datasetPrep": "a", "fraction": 1}), totalTokens=100), None, None),
    ("neither", {}, "exactly one of `components` or `perSplit`", "exactly one of `components` or `perSplit`"),
    ("both", with_(WEIGHTS, perSplit=PER_SPLIT["perSplit"]), "exactly one of `components` or `perSplit`",
     "exactly one of `components` or `perSplit`"),
    ("splits-with-per-split", with_(PER_SPLIT, splits="98,2"), "drop `splits`", "drop `splits`"),
    ("splits-no-train", with_(WEIGHTS, splits="0,50,50"), "training set nothing", "training set nothing"),
    ("splits-garbage", with_(WEIGHTS, splits="train=98"), "should match", "should match"),
    ("weight-and-fraction", with_(comps({"datasetPrep": "a", "weight": 1, "fraction": 1}), totalTokens=5),
     "exactly one of `weight` or `fraction`", "exactly one of `weight` or `fraction`"),
    ("no-share", comps({"datasetPrep": "a"}), "exactly one of `weight` or `fraction`",
     "exactly one of `weight` or `fraction`"),
    ("weight-zero", comps({"datasetPrep": "a", "weight": 0}), "greater than 0", "greater than 0"),
    ("weight-negative", comps({"datasetPrep": "a", "weight": -1}), "greater than 0", "greater than 0"),
    ("fraction-over-one", with_(comps({"datasetPrep": "a", "fraction": 1.5}), totalTokens=5),
     "less than or equal to 1", "less than or equal to 1"),
    ("fractions-short", with_(comps({"datasetPrep": "a", "fraction": 0.5}, {"datasetPrep": "b", "fraction": 0.4}),
                              totalTokens=5), "sum to", "the fractions must sum to 1"),
    ("fractions-over", with_(comps({"datasetPrep": "a", "fraction": 0.6}, {"datasetPrep": "b", "fraction": 0.41}),
                             totalTokens=5), "sum to", "the fractions must sum to 1"),
    ("mixed-shares", with_(comps({"datasetPrep": "a", "fraction": 0.5}, {"datasetPrep": "b", "weight": 1}),
                           totalTokens=5), "not both", "not both"),
    ("fractions-without-budget", comps({"datasetPrep": "a", "fraction": 0.5}, {"datasetPrep": "b", "fraction": 0.5}),
     "set `totalTokens`", "set `totalTokens`"),
    ("per-split-fractions-without-budget",
     {"perSplit": {"train": [{"datasetPrep": "a", "weight": 1}], "test": [{"datasetPrep": "b", "fraction": 1}]}},
     "set `totalTokens`", "set `totalTokens`"),
    ("duplicate", comps({"datasetPrep": "a", "weight": 1}, {"datasetPrep": "a", "weight": 2}), "listed twice",
     "listed twice"),
    ("duplicate-key", comps({"datasetPrep": "a", "textKey": "t", "weight": 1},
                            {"datasetPrep": "a", "textKey": "t", "weight": 2}), "listed twice", "listed twice"),
    ("per-split-duplicate", {"perSplit": {"train": [{"datasetPrep": "a", "weight": 1},
                                                    {"datasetPrep": "a", "weight": 1}]}},
     "listed twice", "listed twice"),
    ("per-split-no-train", {"perSplit": {"valid": [{"datasetPrep": "a", "weight": 1}]}}, "Field required",
     "Required value"),
    ("empty-components", {"components": []}, "at least 1 item", "should have at least 1"),
    ("files-path-absolute", with_(WEIGHTS, files={"path": "/blends"}), "relative path", "relative path"),
    ("files-path-dotdot", with_(WEIGHTS, files={"path": "../x"}), "'..'", "'..'"),
    ("mount-path-relative", with_(WEIGHTS, mountPath="data"), "should match", "should match"),
    ("max-epochs-zero", with_(WEIGHTS, maxEpochs=0), "greater than 0", "greater than 0"),
    ("budget-zero", with_(WEIGHTS, totalTokens=0), "greater than or equal to 1", "greater than or equal to 1"),
    ("bad-name", comps({"datasetPrep": "Wiki_1", "weight": 1}), "should match", "should match"),
    ("unknown-field", with_(WEIGHTS, weights=[1]), "Extra inputs are not permitted", "unknown field"),
]


def blend_verdict(spec: dict) -> str | None:
    try:
        parse_blend_spec(copy.deepcopy(spec))
    except ValidationError as exc:
        return format_validation_error(exc)
    return None
