"""semantics/: what a policy means. IR (ir.py), frontends (frontends/) over located YAML
(located_yaml.py) with their errors (errors.py), the HTTP/1.1 codec model (http1.py), path handling
(paths.py), the RE2 subset (regex.py), the field model (fields.py), requests and outcomes
(request.py), the reference interpreter (interpreter.py), the same meaning as Z3 terms
(symbolic.py), Envoy's wire bytes for local replies (wire.py) and the IR -> Envoy emitter
(to_envoy.py). See docs/architecture.md."""
