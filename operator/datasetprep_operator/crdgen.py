"""Generate the CRDs (DatasetPrep, DatasetBlend) and their Markdown reference from the pydantic models.

    python -m datasetprep_operator.crdgen            > crds/datasetprep.io_datasetpreps.yaml
    python -m datasetprep_operator.crdgen --blend    > crds/datasetprep.io_datasetblends.yaml
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
import dataclasses
import json
import sys
import typing
from collections.abc import Iterator
from typing import Any

import yaml
from pydantic import BaseModel

from datasetprep import blendspec, spec as model
from datasetprep.blendspec import FRACTION_TOLERANCE, DatasetBlendSpec, DatasetBlendStatus
from datasetprep.spec import CEL_NOT_A_FOLDER, CEL_RELATIVE_PATH, DatasetPrepSpec, DatasetPrepStatus

CRD_NAME = f"{model.PLURAL}.{model.GROUP}"
BLEND_CRD_NAME = f"{blendspec.BLEND_PLURAL}.{model.GROUP}"
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
    "spec.output.prefix": _relative_path_rules("output.prefix") + [
        {"rule": CEL_NOT_A_FOLDER, "message": "output.prefix names a folder: give a file prefix in it"},
    ],
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


def _component_list_rules(where: str) -> list[dict[str, str]]:
    """The rules of one component list (``blendspec.check_components``)."""
    key = "(has({v}.textKey) ? {v}.textKey : '')"
    return [
        {"rule": "self.all(c, has(c.weight)) || self.all(c, has(c.fraction))",
         "message": f"{where}: use `weight` on every component or `fraction` on every component, not both"},
        {"rule": f"!self.all(c, has(c.fraction)) || (self.map(c, c.fraction).sum() >= {1 - FRACTION_TOLERANCE!r} "
                 f"&& self.map(c, c.fraction).sum() <= {1 + FRACTION_TOLERANCE!r})",
         "message": f"{where}: the fractions must sum to 1"},
        {"rule": "self.all(c, self.exists_one(d, d.datasetPrep == c.datasetPrep && "
                 f"{key.format(v='d')} == {key.format(v='c')}))",
         "message": f"{where}: a component is listed twice; give it one weight"},
    ]


_ONE_SHARE = [{"rule": "has(self.weight) != has(self.fraction)",
               "message": "set exactly one of `weight` or `fraction`"}]
_NO_FRACTION = "(!has({l}) || !has({l}[0].fraction))"

#: CEL rules of the DatasetBlend CRD by schema path, mirroring the validators of ``datasetprep.blendspec``.
BLEND_RULES: dict[str, list[dict[str, str]]] = {
    "spec": [
        {"rule": "has(self.components) != has(self.perSplit)",
         "message": "set exactly one of `components` or `perSplit`"},
        {"rule": "!has(self.perSplit) || !has(self.splits)",
         "message": "`splits` cuts one distribution; with `perSplit` every list is used whole: drop `splits`",
         "fieldPath": ".splits"},
        {"rule": "!has(self.splits) || !self.splits.matches('^ *0+([.]0+)? *(,.*)?$')",
         "message": "splits gives the training set nothing", "fieldPath": ".splits"},
        {"rule": "has(self.totalTokens) || (" + _NO_FRACTION.format(l="self.components") + " && (!has(self.perSplit) "
                 "|| (!has(self.perSplit.train[0].fraction) && " + " && ".join(
                     _NO_FRACTION.format(l=f"self.perSplit.{x}") for x in ("valid", "test")) + ")))",
         "message": "`fraction` is a share of the token budget: set `totalTokens`, or use `weight`"},
    ],
    "spec.components": _component_list_rules("components"),
    "spec.components[]": _ONE_SHARE,
    **{f"spec.perSplit.{s}": _component_list_rules(f"perSplit.{s}") for s in blendspec.SPLIT_NAMES},
    **{f"spec.perSplit.{s}[]": _ONE_SHARE for s in blendspec.SPLIT_NAMES},
    "spec.files.path": _relative_path_rules("files.path"),
}

BLEND_SCHEMA_EXTRAS: dict[str, dict[str, Any]] = {
    "status.conditions": SCHEMA_EXTRAS["status.conditions"],
}

_CARRIED = ("enum", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
            "maxLength", "pattern", "minItems", "maxItems")


# --------------------------------------------------------------------------- schema


def structural(schema: dict[str, Any], *, path: str, defaults: bool = True,
               factory_defaults: dict[str, Any] | None = None, rules: dict[str, list[dict[str, str]]] | None = None,
               extras: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Turn a pydantic JSON schema (with ``$defs``) into a structural Kubernetes schema.

    Args:
        rules, extras: CEL rules and schema keywords by path (default: the DatasetPrep's).
    """
    defs = schema.get("$defs", {})
    ctx = _Ctx(defs, defaults, factory_defaults or {}, RULES if rules is None else rules,
               SCHEMA_EXTRAS if extras is None else extras)
    return _convert(schema, ctx, path)


@dataclasses.dataclass(frozen=True)
class _Ctx:
    defs: dict[str, Any]
    defaults: bool
    factory_defaults: dict[str, Any]
    rules: dict[str, list[dict[str, str]]]
    extras: dict[str, dict[str, Any]]


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


def _convert(node: dict[str, Any], ctx: _Ctx, path: str) -> dict[str, Any]:
    node = _resolve(node, ctx.defs)
    out: dict[str, Any] = {}
    kind = node.get("type")
    if kind is None and "properties" in node:
        kind = "object"
    if kind is not None:
        out["type"] = kind
    if node.get("description"):
        out["description"] = " ".join(node["description"].split())
    if ctx.defaults:
        if "default" in node and node["default"] is not None:
            out["default"] = copy.deepcopy(node["default"])
        elif path in ctx.factory_defaults:
            out["default"] = copy.deepcopy(ctx.factory_defaults[path])
    for key in _CARRIED:
        if key in node:
            out[key] = copy.deepcopy(node[key])
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(out.get(exclusive), (int, float)) and not isinstance(out[exclusive], bool):
            out[bound] = out[exclusive]  # JSON Schema's number is OpenAPI v3.0's bound + a boolean
            out[exclusive] = True
    if kind == "object":
        props = node.get("properties") or {}
        if props:
            out["properties"] = {name: _convert(sub, ctx, f"{path}.{name}") for name, sub in props.items()}
            if node.get("required"):
                out["required"] = list(node["required"])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = _convert(extra, ctx, f"{path}{{}}")
        elif (extra is True or extra == {}) or (not props and extra is None):
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["items"] = _convert(node.get("items", {}), ctx, f"{path}[]")
    elif kind is None:
        out["x-kubernetes-preserve-unknown-fields"] = True
    out.update(copy.deepcopy(ctx.extras.get(path, {})))
    if path in ctx.rules:
        out["x-kubernetes-validations"] = copy.deepcopy(ctx.rules[path])
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


@dataclasses.dataclass(frozen=True)
class Kind:
    """One custom resource kind of the group: its models, rules and names."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    rules: dict[str, list[dict[str, str]]]
    extras: dict[str, dict[str, Any]]
    columns: tuple[dict[str, str], ...]
    source: str
    """The module it is generated from (for the headers)."""

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{model.GROUP}"

    @property
    def file(self) -> str:
        return f"{model.GROUP}_{self.plural}.yaml"


_READY_COLUMN = {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}
_AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

DATASETPREP = Kind(
    kind=model.KIND, plural=model.PLURAL, singular=model.SINGULAR, short_names=tuple(model.SHORT_NAMES),
    spec=DatasetPrepSpec, status=DatasetPrepStatus, rules=RULES, extras=SCHEMA_EXTRAS, source="datasetprep/spec.py",
    columns=({"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
             {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary"},
             {"name": "Tokens", "type": "integer", "jsonPath": ".status.output.tokens"}, _READY_COLUMN, _AGE_COLUMN))
DATASETBLEND = Kind(
    kind=blendspec.BLEND_KIND, plural=blendspec.BLEND_PLURAL, singular=blendspec.BLEND_SINGULAR,
    short_names=tuple(blendspec.BLEND_SHORT_NAMES), spec=DatasetBlendSpec, status=DatasetBlendStatus,
    rules=BLEND_RULES, extras=BLEND_SCHEMA_EXTRAS, source="datasetprep/blendspec.py",
    columns=({"name": "Components", "type": "integer", "jsonPath": ".status.componentCount"},
             {"name": "Tokens", "type": "integer", "jsonPath": ".status.tokens"}, _READY_COLUMN, _AGE_COLUMN))
KINDS = (DATASETPREP, DATASETBLEND)


def openapi_schema(kind: Kind = DATASETPREP) -> dict[str, Any]:
    """The whole ``openAPIV3Schema`` of a kind's CRD."""
    spec_schema = structural(kind.spec.model_json_schema(by_alias=True), path="spec",
                             factory_defaults=factory_defaults(kind.spec, "spec"), rules=kind.rules, extras=kind.extras)
    status_schema = structural(kind.status.model_json_schema(by_alias=True), path="status", defaults=False,
                               rules=kind.rules, extras=kind.extras)
    status_schema["properties"]["kopf"] = {
        "type": "object",
        "description": "The operator's own bookkeeping (kopf handler progress). Not an API.",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    return {
        "type": "object",
        "description": f"{kind.kind}: {_doc(kind.spec)}",
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


def crd(kind: Kind = DATASETPREP) -> dict[str, Any]:
    """The CustomResourceDefinition of a kind (default ``datasetpreps.datasetprep.io``)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {"app.kubernetes.io/name": "datasetprep", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": model.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": list(CATEGORIES),
            },
            "versions": [{
                "name": model.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [dict(c) for c in kind.columns],
                "schema": {"openAPIV3Schema": openapi_schema(kind)},
            }],
        },
    }


def blend_crd() -> dict[str, Any]:
    """The CustomResourceDefinition ``datasetblends.datasetprep.io``."""
    return crd(DATASETBLEND)


def header(kind: Kind = DATASETPREP) -> str:
    flag = " --blend" if kind is DATASETBLEND else ""
    return (f"# Generated by `python -m datasetprep_operator.crdgen{flag}` from {kind.source} -- do not edit.\n"
            f"# Regenerate: python -m datasetprep_operator.crdgen{flag} > crds/{kind.file}\n")


HEADER = header(DATASETPREP)


def to_yaml(obj: dict[str, Any]) -> str:
    """The CRD as YAML, with a header saying how to regenerate it."""
    kind = next(k for k in KINDS if k.crd_name == obj["metadata"]["name"])
    return header(kind) + yaml.safe_dump(obj, sort_keys=False, width=100, allow_unicode=True)


# --------------------------------------------------------------------------- markdown


def markdown(crd_obj: dict[str, Any] | None = None) -> str:
    """A ``kubectl explain``-like reference of the CRDs (both kinds, or the one given), one table per object."""
    if crd_obj is not None:
        return _kind_markdown(crd_obj, first=True)
    return _kind_markdown(crd(DATASETPREP), first=True) + "\n" + _kind_markdown(crd(DATASETBLEND), first=False)


def _kind_markdown(crd_obj: dict[str, Any], *, first: bool) -> str:
    version = crd_obj["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    names = crd_obj["spec"]["names"]
    lines = [
        "<!-- Generated by `python -m datasetprep_operator.crdgen --markdown` from datasetprep/spec.py and "
        "datasetprep/blendspec.py. Do not edit; regenerate with: python -m datasetprep_operator.crdgen --markdown > "
        "docs/crd-reference.md -->",
        "",
    ] if first else []
    title = "" if first else f"{names['kind']} "
    lines += [
        f"# {names['kind']} reference (`{crd_obj['spec']['group']}/{version['name']}`)",
        "",
        root["description"],
        "",
        f"* Resource: `{names['plural']}.{crd_obj['spec']['group']}`, namespaced; short name "
        f"`{', '.join(names['shortNames'])}`; category `{', '.join(names['categories'])}`.",
        f"* `kubectl get {names['shortNames'][0]}` columns: "
        + ", ".join(c["name"] for c in version["additionalPrinterColumns"]) + ".",
        "* Status is a subresource written by the operator; `status.kopf` is the operator's own bookkeeping.",
        "",
    ]
    for part in ("spec", "status"):
        for path, node in _objects(root["properties"][part], part):
            lines += _table(path, node, title=title)
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


def _table(path: str, node: dict[str, Any], *, title: str = "") -> list[str]:
    lines = [f"## {title}`{path}`", ""]
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
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--markdown", action="store_true", help="print the Markdown reference of both kinds")
    what.add_argument("--blend", action="store_true", help="print the DatasetBlend CRD instead of the DatasetPrep one")
    args = parser.parse_args(argv)
    sys.stdout.write(markdown() if args.markdown else to_yaml(crd(DATASETBLEND if args.blend else DATASETPREP)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
