"""Flower federated training across agency nodes (see docs/FEDERATED.md).

Public entry points: `federated.jobs.load_job/parse_job/JobSpec`, `federated.runner.run_job`,
`federated.deployment.NodeSpec/Federation`, `crypto.flower_keys.FlowerSecurity/prepare_flower_security`
(TLS + SuperNode authentication), `federated.admission.Admission/Decision/PolicyAdmission/LedgerAdmission/
admit_at_node`, and the `xgate train` CLI (train_cli.py).
"""
