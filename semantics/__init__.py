"""semantics/: what a policy means. IR (ir.py), frontends (frontends/), the HTTP/1.1 codec model
(http1.py), path handling (paths.py), the RE2 subset (regex.py), the reference interpreter
(interpreter.py) and the IR -> Envoy emitter (to_envoy.py). See docs/architecture.md."""
