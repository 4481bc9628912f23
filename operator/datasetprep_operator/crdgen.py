"""Generate the DatasetPrep CRD (and its Markdown reference) from the pydantic models.

    python -m datasetprep_operator.crdgen            > crds/datasetprep.io_datasetpreps.yaml
    python -m datasetprep_operator.crdgen --markdown > docs/crd-reference.md

The OpenAPI v3 schema is pydantic's JSON schema made *structural*, as Kubernetes requires: every
``$ref`` inlined, no ``title``, ``anyOf [X, null]`` turned into an optional ``X``, free-form maps as
``additionalProperties`` and ``Any`` as ``x-kubernetes-preserve-unknown-fields``. Descriptions,
defaults (``default_factory`` ones included), bounds and patterns are carried over.

What pydantic checks in Python validators -- not in its JSON schema -- is added here by path, in
:data:`RULES` (CEL ``x-kubernetes-validations``, with the validators' own messages) and
:data:`SCHEMA_EXTRAS`. ``tests/test_crd.py`` feeds the same manifests to pydantic and to a real API
server and checks that both accept or both reject each one.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import typing
from collections.abc import Iterator
from typing import Any

import yaml
from pydantic import BaseModel

from datasetprep import spec as model
from datasetprep.spec import CEL_RELATIVE_PATH, DatasetPrepSpec, DatasetPrepStatus

CRD_NAME = f"{model.PLURAL}.{model.GROUP}"
CATEGORIES = ["datasetprep"]

# check_relative_path also refuses paths that normalise to "." ("", ".", "./", "./."), which
# CEL_RELATIVE_PATH alone lets through.
_CEL_NAMES_SOMETHING = "!self.matches('^([.]/*)*$')"


def _relative_path_rules(what: str) -> list[dict[str, str]]:
    return [
        {"rule": CEL_RELATIVE_PATH,
         "message": f"{what} must be a relative path inside the volume without '..' segments"},
        {"rule": _CEL_NAMES_SOMETHING, "message": f"{what} must name a file or prefix"},
    ]


#: CEL rules by schema path, mirroring the model validators of ``datasetprep.spec``.
RULES: dict[str, list[dict[str, str]]] = {
    "spec": [
        {"rule": "!has(self.parallelism) || self.parallelism <= (has(self.shards) ? self.shards : 1)",
         "message": "parallelism cannot exceed shards", "fieldPath": ".parallelism"},
        {"rule": "!has(self.keepShards) || !self.keepShards || (has(self.shards) && self.shards > 1)",
         "message": "keepShards needs shards > 1", "fieldPath": ".keepShards"},
    ],
    "spec.source": [
        {"rule": "has(self.hub) != has(self.files)", "message": "source must set exactly one of `hub` or `files`"},
    ],
    "spec.source.files.paths[]": _relative_path_rules("source.files.paths entry"),
    "spec.tokenizer": [
        {"rule": "!has(self.type) || self.type != 'null' || (!has(self.hub) && !has(self.path))",
         "message": "tokenizer type `null` takes no `hub` or `path`"},
        {"rule": "!has(self.type) || self.type != 'null' || has(self.vocabSize)",
         "message": "tokenizer type `null` needs `vocabSize`"},
        {"rule": "(has(self.type) && self.type == 'null') || has(self.hub) != has(self.path)",
         "message": "tokenizer must set exactly one of `hub` or `path`"},
        {"rule": "(has(self.type) && self.type == 'null') || !has(self.vocabSize)",
         "message": "tokenizer.vocabSize is only for type `null`; other tokenizers report their own"},
    ],
    "spec.tokenizer.path.path": _relative_path_rules("tokenizer.path.path"),
    "spec.output.prefix": _relative_path_rules("output.prefix"),
}

#: Plain schema keywords by path, for validator checks that OpenAPI can say without CEL.
SCHEMA_EXTRAS: dict[str, dict[str, Any]] = {
    # SourceSpec._keys: unique keys (a set; the API server names the duplicate) of a safe alphabet.
    "spec.source.textKeys": {"x-kubernetes-list-type": "set"},
    "spec.source.textKeys[]": {"pattern": model._CONFIG_KEY},
    # Bounds that keep the CEL cost estimate of the path rules within the API server's budget
    # (Linux's PATH_MAX; pydantic leaves these unbounded).
    "spec.source.files.paths[]": {"maxLength": 4096},
    # kstatus conditions: one per type, merged by type.
    "status.conditions": {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
}

_CARRIED = ("enum", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
            "maxLength", "pattern", "minItems", "maxItems")


# --------------------------------------------------------------------------- schema


def structural(schema: dict[str, Any], *, path: str, defaults: bool = True,
               factory_defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Turn a pydantic JSON schema (with ``$defs``) into a structural Kubernetes schema."""
    defs = schema.get("$defs", {})
    return _convert(schema, defs, path, defaults, factory_defaults or {})


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline ``$ref``/single ``allOf``/``anyOf [X, null]``, keeping the outer description and default."""
    node = dict(node)
    while True:
        if "$ref" in node:
            target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
            node = {**target, **{k: v for k, v in node.items() if k in ("description", "default")}}
        elif "allOf" in node and len(node["allOf"]) == 1:
            node = {**node.pop("allOf")[0], **node}
        elif "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(f"cannot express anyOf {node['anyOf']} structurally")
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            if rest.get("default", ...) is None:
                del rest["default"]
            node = {**options[0], **rest}
        else:
            return node


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str, defaults: bool,
             factory_defaults: dict[str, Any]) -> dict[str, Any]:
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    kind = node.get("type")
    if kind is None and "properties" in node:
        kind = "object"
    if kind is not None:
        out["type"] = kind
    if node.get("description"):
        out["description"] = " ".join(node["description"].split())
    if defaults:
        if "default" in node and node["default"] is not None:
            out["default"] = copy.deepcopy(node["default"])
        elif path in factory_defaults:
            out["default"] = copy.deepcopy(factory_defaults[path])
    for key in _CARRIED:
        if key in node:
            out[key] = copy.deepcopy(node[key])
    if kind == "object":
        props = node.get("properties") or {}
        if props:
            out["properties"] = {
                name: _convert(sub, defs, f"{path}.{name}", defaults, factory_defaults) for name, sub in props.items()
            }
            if node.get("required"):
                out["required"] = list(node["required"])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = _convert(extra, defs, f"{path}{{}}", defaults, factory_defaults)
        elif (extra is True or extra == {}) or (not props and extra is None):
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["items"] = _convert(node.get("items", {}), defs, f"{path}[]", defaults, factory_defaults)
    elif kind is None:
        out["x-kubernetes-preserve-unknown-fields"] = True
    out.update(copy.deepcopy(SCHEMA_EXTRAS.get(path, {})))
    if path in RULES:
        out["x-kubernetes-validations"] = copy.deepcopy(RULES[path])
    return out


def factory_defaults(cls: type[BaseModel], path: str) -> dict[str, Any]:
    """Defaults made by ``default_factory`` (absent from pydantic's JSON schema), by schema path."""
    found: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        alias = field.alias or name
        sub = f"{path}.{alias}"
        if field.default_factory is not None:
            value = field.default_factory()  # type: ignore[call-arg]
            found[sub] = value.model_dump(by_alias=True, exclude_none=True, mode="json") \
                if isinstance(value, BaseModel) else value
        for inner in _models_in(field.annotation):
            found.update(factory_defaults(inner, sub))
    return found


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            yield arg


def _doc(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


def openapi_schema() -> dict[str, Any]:
    """The whole ``openAPIV3Schema`` of the DatasetPrep CRD."""
    spec_schema = structural(DatasetPrepSpec.model_json_schema(by_alias=True), path="spec",
                             factory_defaults=factory_defaults(DatasetPrepSpec, "spec"))
    status_schema = structural(DatasetPrepStatus.model_json_schema(by_alias=True), path="status", defaults=False)
    status_schema["properties"]["kopf"] = {
        "type": "object",
        "description": "The operator's own bookkeeping (kopf handler progress). Not an API.",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    return {
        "type": "object",
        "description": f"{model.KIND}: {_doc(DatasetPrepSpec)}",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this "
                           "representation of an object."},
            "kind": {"type": "string", "description": "Kind is a string value representing the REST resource "
                     "this object represents."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition ``datasetpreps.datasetprep.io``."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "datasetprep", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": model.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": model.KIND,
                "listKind": f"{model.KIND}List",
                "plural": model.PLURAL,
                "singular": model.SINGULAR,
                "shortNames": list(model.SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [{
                "name": model.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary"},
                    {"name": "Tokens", "type": "integer", "jsonPath": ".status.output.tokens"},
                    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": openapi_schema()},
            }],
        },
    }


HEADER = ("# Generated by `python -m datasetprep_operator.crdgen` from datasetprep/spec.py -- do not edit.\n"
          "# Regenerate: python -m datasetprep_operator.crdgen > crds/datasetprep.io_datasetpreps.yaml\n")


def to_yaml(obj: dict[str, Any]) -> str:
    """The CRD as YAML, with a header saying how to regenerate it."""
    return HEADER + yaml.safe_dump(obj, sort_keys=False, width=100, allow_unicode=True)


# --------------------------------------------------------------------------- markdown


def markdown(crd_obj: dict[str, Any] | None = None) -> str:
    """A ``kubectl explain``-like reference of the CRD, one table per object."""
    crd_obj = crd_obj or crd()
    version = crd_obj["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    names = crd_obj["spec"]["names"]
    lines = [
        "<!-- Generated by `python -m datasetprep_operator.crdgen --markdown` from datasetprep/spec.py. "
        "Do not edit; regenerate with: python -m datasetprep_operator.crdgen --markdown > docs/crd-reference.md -->",
        "",
        f"# {names['kind']} reference (`{crd_obj['spec']['group']}/{version['name']}`)",
        "",
        root["description"],
        "",
        f"* Resource: `{names['plural']}.{crd_obj['spec']['group']}`, namespaced; short name "
        f"`{', '.join(names['shortNames'])}`; category `{', '.join(names['categories'])}`.",
        "* `kubectl get dsp` columns: " + ", ".join(c["name"] for c in version["additionalPrinterColumns"]) + ".",
        "* Status is a subresource written by the operator; `status.kopf` is the operator's own bookkeeping.",
        "",
    ]
    for path, node in _objects(root["properties"]["spec"], "spec"):
        lines += _table(path, node)
    for path, node in _objects(root["properties"]["status"], "status"):
        lines += _table(path, node)
    return "\n".join(lines).rstrip() + "\n"


def _objects(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if node.get("type") == "array":
        yield from _objects(node["items"], path + "[]")
        return
    if node.get("type") != "object" or "properties" not in node:
        return
    yield path, node
    for name, sub in node["properties"].items():
        yield from _objects(sub, f"{path}.{name}")


def _type(node: dict[str, Any]) -> str:
    kind = node.get("type", "any")
    if kind == "array":
        return f"[]{_type(node['items'])}"
    if kind == "object" and "additionalProperties" in node:
        return f"map[string]{_type(node['additionalProperties'])}"
    if kind == "object" and "properties" not in node:
        return "object (free-form)"
    return kind


def _constraints(node: dict[str, Any]) -> list[str]:
    out = []
    labels = {"minimum": ">= {}", "maximum": "<= {}", "minLength": "min length {}", "maxLength": "max length {}",
              "minItems": "min items {}", "maxItems": "max items {}", "pattern": "pattern `{}`"}
    for key, text in labels.items():
        if key in node:
            out.append(text.format(node[key]))
    if "enum" in node:
        out.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    if node.get("x-kubernetes-list-type") == "set":
        out.append("unique items")
    items = node.get("items") or {}
    for key, text in labels.items():
        if key in items:
            out.append("each " + text.format(items[key]))
    if "properties" not in node:  # an object's rules are listed in its own section
        for rule in node.get("x-kubernetes-validations", []) + items.get("x-kubernetes-validations", []):
            out.append(f"rule: {rule['message']}")
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(path: str, node: dict[str, Any]) -> list[str]:
    lines = [f"## `{path}`", ""]
    if node.get("description"):
        lines += [node["description"], ""]
    for rule in node.get("x-kubernetes-validations", []):
        lines.append(f"* Rule: {rule['message']} (`{rule['rule']}`)")
    if node.get("x-kubernetes-validations"):
        lines.append("")
    lines += ["| Field | Type | Required | Default | Description |", "|---|---|---|---|---|"]
    required = set(node.get("required", ()))
    for name, sub in node["properties"].items():
        default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ""
        desc = sub.get("description", "")
        extra = _constraints(sub)
        if extra:
            desc += " (" + "; ".join(extra) + ")"
        lines.append(f"| `{name}` | {_type(sub)} | {'yes' if name in required else ''} | {_cell(default)} | "
                     f"{_cell(desc)} |")
    return lines + [""]


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasetprep_operator.crdgen", description=__doc__.split("\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print the Markdown reference instead of the CRD")
    args = parser.parse_args(argv)
    sys.stdout.write(markdown() if args.markdown else to_yaml(crd()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
