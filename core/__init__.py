"""The framework: stages, contracts and plumbing. Knows no concrete method, backbone or dataset,
and imports no orchestrator (Prefect lives in ``pretextflow.flows``)."""
