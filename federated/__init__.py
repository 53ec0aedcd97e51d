"""Flower federated training across agency nodes (see docs/FEDERATED.md).

Public entry points: `federated.jobs.load_job/parse_job/JobSpec`, `federated.runner.run_job/NodeSpec/Tls`,
`federated.admission.Admission/Decision/LedgerAdmission`, and the `xgate train` CLI (train_cli.py).
"""
