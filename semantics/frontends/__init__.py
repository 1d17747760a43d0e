"""Frontends: policy files in, one `Policy` IR out.

`load_policy(paths)` looks at each document and hands it to the frontend that owns its shape:
an Envoy bootstrap (`static_resources`), Istio `AuthorizationPolicy` / `VirtualService` documents,
a bare Envoy RBAC HTTP filter ({name, typed_config}, as istiod's golden files hold), or DSL text
(`.l7fp` files). Used by every CLI command.
"""
from __future__ import annotations

from ..errors import ConfigError, Origin
from ..ir import Policy
from ..located_yaml import Document, load_documents


def load_policy(paths: list[str], listener: str | None = None, workload=None) -> Policy:
    from . import dsl, envoy, istio
    from .envoy_matchers import bare_http_filter

    if not paths:
        raise ConfigError(Origin("(command line)", 0, "CONFIG"), "no policy file given")
    envoy_docs: list[Document] = []
    istio_docs: list[Document] = []
    filter_docs: list[Document] = []
    dsl_files: list[str] = []
    for path in paths:
        if path.endswith(".l7fp"):
            dsl_files.append(path)
            continue
        documents = load_documents(path)
        if not documents:
            raise ConfigError(Origin(path, 0, "(file)"), "no policy document in the file (empty, or only comments)")
        for doc in documents:
            root = doc.root
            if not root.is_map():
                raise root.error("expected a mapping at the top of the document")
            if root.has("static_resources"):
                envoy_docs.append(doc)
            elif root.has("kind") and root.has("api_version"):
                istio_docs.append(doc)
            elif root.has("typed_config") and root.has("name"):
                filter_docs.append(doc)
            else:
                raise root.error("not an Envoy bootstrap, an Istio resource, or an Envoy HTTP filter")
    kinds = [k for k, docs in (("Envoy bootstrap", envoy_docs), ("Istio", istio_docs),
                              ("Envoy HTTP filter", filter_docs), ("DSL", dsl_files)) if docs]
    if len(kinds) > 1:
        raise ConfigError(Origin(paths[0], 0, "(files)"),
                          f"mixing {' and '.join(kinds)} inputs in one policy is not supported")
    if envoy_docs:
        if len(envoy_docs) > 1:
            second = envoy_docs[1]
            raise second.root.error("more than one Envoy bootstrap: give one file per policy")
        return envoy.policy_from_bootstrap(envoy_docs[0].root, listener)
    if istio_docs:
        return istio.policy_from_documents(istio_docs, workload)
    if filter_docs:
        return istio.policy_with_default_routes([bare_http_filter(d.root) for d in filter_docs],
                                                tuple(sorted({d.file for d in filter_docs})))
    return dsl.policy_from_files(dsl_files)
