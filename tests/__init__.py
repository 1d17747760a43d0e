"""The test suite (`make test`): one package per stage, plus the CLI and frontend-error tests."""
