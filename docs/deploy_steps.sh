# xgate: a federation across hosts, every command in order.
#
# This file is the single source of README.md's "Deploying across machines" block (everything below
# the first blank line; tests/unit/test_deploy_steps.py checks they are equal) and of
# tests/deploy/test_deploy_netns.py, which runs it as written: each host in its own network
# namespace, holding only its own files, reaching the others by name.
#
# `# @ HOST` says where the commands under it run; `# @ HOST service` starts a long-running service.
# The last blocks renew every node's certificate and keys while all services keep running.
# HOST `agency` stands for each agency's node host: run the block once per agency with
# AGENCY and NODE set (tax tax.xgate.test, hrss hrss.xgate.test, civil_affairs civil-affairs.xgate.test,
# household household.xgate.test); `ca for each agency` likewise on the CA host; `(only tax, hrss)`
# limits a block to those agencies.
# ----------------------------------------------------------------------------------------------

# @ ca
# The federation operator: CA (keep ca/ offline), the policy set, the pseudonym key, users.
umask 077   # every file from here on owner-only: keys, API keys, the pseudonym key
xgate pki init --ca ca --name "Example federation CA"
xgate policy init --out policies --all-day   # trial: office hours widened to 24 h; omit --all-day in production
xgate keys pseudonym --out pseudonym.key     # the one shared secret: agencies and requester clients, never the gateway
xgate pki add-user --users users.json --principals policies/principals.toml --user cw-zhou --agency civil_affairs --role caseworker --tier gold --out cw-zhou.apikey
xgate pki add-user --users users.json --user ap-qian --agency civil_affairs --role approver --tier bronze --out ap-qian.apikey
xgate demo-data --out extracts --people 20000 --applicants 300   # trial: synthetic extracts; agencies bring their own
mkdir -p requests issued

# @ ca
# Federated training: an hrss analyst trains a risk model on hrss contribution histories (registered
# for training in the shipped policies/datasets.toml) joined with tax incomes, which the tax agency
# registers for training here together with the agreement allowing it (the analyst is registered
# below, with the key that signs its jobs).
cat >> policies/datasets.toml <<'EOF'
[[datasets]]
id = "tax.income_2025"
agency = "tax"
classification = "important"
epsilon_cap = 4.0
description = "Monthly taxable incomes, 2025 (vertical risk model with hrss)"
elements = ["tax.monthly_income"]
EOF
cat > policies/agreements/train-tax-income.cedar <<'EOF'
// hrss analysts may train the joint risk model on tax incomes (vertical, with hrss contributions).
@id("train-tax-income")
@agreement("DSA-2026-TAX-FL-01")
@provider("tax")
permit (principal, action == Action::"train", resource == Dataset::"tax.income_2025")
when {
  principal.agency == "hrss" && principal.role == "analyst" &&
  context.purpose == "fraud_detection" && context.legal_basis == "SIL-2010-art-87"
};
EOF

# @ client
# The approver at civil affairs makes its signing key; only the public half travels, into the policy set.
xgate approval keygen --name ap-qian --agency civil_affairs --out ap-qian.key > approver.toml
# The caseworker's own signing key: it signs every check (question, HE context, subjects), so the
# gateway cannot ask the nodes anything in its name; only the public half travels.
xgate requester keygen --user cw-zhou --agency civil_affairs --out cw-zhou.sign.key > requester.toml
# The hrss analyst's job-signing key: nodes and the gateway run only job definitions it signed.
xgate train keygen --user an-hrss --out an-hrss.train.key > an-hrss.train.pub
scp approver.toml requester.toml an-hrss.train.pub ca:requests/

# @ ca
cat requests/approver.toml >> policies/approvers.toml   # approvals signed by ap-qian's key are accepted
cat requests/requester.toml >> policies/requesters.toml # checks signed by cw-zhou's key are answered
xgate pki add-user --users users.json --principals policies/principals.toml --user an-hrss --agency hrss --role analyst --tier silver --job-signing-key requests/an-hrss.train.pub --out an-hrss.apikey
# The shipped settings.toml requires every training job to carry its analyst's signature (require_signed_jobs).
xgate policy publish --ca ca --policies policies --version 1 --out policies-v1.json   # CA-signed, versioned

# @ gateway
# The gateway host makes its own keys; only the request travels.
mkdir -p ca keys data training
xgate pki request --kind gateway --agency gateway --out tls --dns gw.xgate.test
# Its Flower SuperLink (training): agencies dial gw.xgate.test, the gateway's own flwr CLI localhost.
xgate pki request --kind flower-superlink --agency gateway --out tls --dns gw.xgate.test --dns localhost --ip 127.0.0.1
xgate keys audit --out keys/audit   # signs the log's checkpoints; its public half goes to every node (witnesses)
scp tls/gateway-gateway.csr.pem tls/flower-superlink-gateway.csr.pem ca:requests/
scp keys/audit.pub.pem ca:requests/gateway-audit.pub.pem

# @ agency
# Each agency's node host: its own keys, a commented config, a request for the CA.
xgate pki request --kind node --agency $AGENCY --out tls --dns $NODE
xgate pki request --kind flower-supernode --agency $AGENCY --out tls   # its SuperNode key (training)
xgate node init --home . --agency $AGENCY --column-key --witness --superlink gw.xgate.test:9092
xgate keys column --out keys/column.key --data-dir data
xgate keys audit --out keys/audit   # signs its own log and its cosignatures of the gateway's
scp tls/node-$AGENCY.csr.pem tls/flower-supernode-$AGENCY.csr.pem tls/supernode-$AGENCY.ssh.pub ca:requests/
scp keys/audit.pub.pem ca:requests/audit-$AGENCY.pub.pem

# @ ca
xgate pki sign --ca ca --request requests/gateway-gateway.csr.pem --kind gateway --agency gateway --out issued
xgate pki sign --ca ca --request requests/flower-superlink-gateway.csr.pem --kind flower-superlink --agency gateway --out issued

# @ ca for each agency
xgate pki sign --ca ca --request requests/node-$AGENCY.csr.pem --kind node --agency $AGENCY --address $NODE:7443 --out issued
xgate pki sign --ca ca --request requests/flower-supernode-$AGENCY.csr.pem --kind flower-supernode --agency $AGENCY --out issued

# @ ca for each agency
# Distribute: CA-signed files, the certificate, the policy bundle, the pseudonym key, the extract.
scp ca/ca.cert.pem ca/crl.pem ca/federation.json $NODE:ca/
scp issued/node-$AGENCY.cert.pem issued/flower-supernode-$AGENCY.cert.pem policies-v1.json extracts/$AGENCY.csv extracts/$AGENCY.mapping.toml $NODE:
scp pseudonym.key $NODE:keys/
# Witnessing: the node checks the gateway log's checkpoints with this key, the gateway the node's cosignatures.
scp requests/gateway-audit.pub.pem $NODE:ca/gateway-audit.pub.pem
scp requests/audit-$AGENCY.pub.pem gw.xgate.test:ca/witness-$AGENCY.pub.pem
# The gateway knows each agency's SuperNode by its public key and certificate only.
scp requests/supernode-$AGENCY.ssh.pub issued/flower-supernode-$AGENCY.cert.pem gw.xgate.test:training/

# @ ca
scp ca/ca.cert.pem ca/crl.pem ca/federation.json gw.xgate.test:ca/
scp issued/gateway-gateway.cert.pem issued/flower-superlink-gateway.cert.pem policies-v1.json gw.xgate.test:
scp users.json gw.xgate.test:keys/
scp ca/ca.cert.pem pseudonym.key cw-zhou.apikey ap-qian.apikey an-hrss.apikey extracts/applicants.csv client.xgate.test:

# @ agency
xgate pki install --cert node-$AGENCY.cert.pem --out tls --ca-cert ca/ca.cert.pem --directory ca/federation.json
xgate pki install --cert flower-supernode-$AGENCY.cert.pem --out tls --ca-cert ca/ca.cert.pem
xgate policy install --bundle policies-v1.json --ca-cert ca/ca.cert.pem --into policies   # refuses unsigned or older
xgate node load --config node.toml --data $AGENCY.csv --mapping $AGENCY.mapping.toml
xgate config check node.toml

# @ agency service
# Listens on $NODE:7443, the address federation.json publishes (packaging/systemd/xgate-node.service).
xgate node serve --config node.toml

# @ gateway
xgate pki install --cert gateway-gateway.cert.pem --out tls --ca-cert ca/ca.cert.pem --directory ca/federation.json
xgate pki install --cert flower-superlink-gateway.cert.pem --out tls --ca-cert ca/ca.cert.pem
xgate policy install --bundle policies-v1.json --ca-cert ca/ca.cert.pem --into policies
# One [nodes.<agency>] per node in federation.json; [training]: the SuperLink's Fleet gate on port 9092
# and one [[training.nodes]] per agency serving a dataset registered for training (tax, hrss).
xgate gateway init --home . --listen 0.0.0.0:8443 --superlink 0.0.0.0:9092   # witness_key: ca/witness-<agency>.pub.pem
xgate keys mask --out keys/mask.key
xgate config check gateway.toml

# @ gateway service
xgate gateway serve --config gateway.toml

# @ client
# The approver approves the 2026 低保 cases (household data is core-class: a check needs a registered approval).
XGATE_API_KEY=$(cat ap-qian.apikey) xgate approval grant --key ap-qian.key --agency civil_affairs --program dibao --case-id-prefix C-2026- --max-subjects 5000 --days 30 --ref-only --gateway https://gw.xgate.test:8443 --ca ca.cert.pem > approval.ref
# A caseworker: the 低保 check for every applicant (ids are pseudonymised here, values stay encrypted).
XGATE_API_KEY=$(cat cw-zhou.apikey) xgate check --program dibao --subjects applicants.csv --purpose dibao --legal-basis SAR-2014-art-12 --case-id C-2026-001 --approval-ref $(cat approval.ref) --gateway https://gw.xgate.test:8443 --ca ca.cert.pem --pseudonym-key pseudonym.key --key-file requester.key --signing-key cw-zhou.sign.key

# @ agency service (only tax, hrss)
# The SuperNodes of the agencies serving training datasets dial the gateway's SuperLink (outbound
# HTTPS to gw.xgate.test:9092 is all they need); each decides admission under its own policies.
xgate node supernode --config node.toml

# @ client
# The hrss analyst's job: vertical (label at hrss, features at hrss and tax, aligned by private set
# intersection); the gateway decides `train`, each node decides again, the gateway's audit log records it.
cat > risk-job.toml <<'EOF'
job_id = "risk-2026-01"
purpose = "fraud_detection"
legal_basis = "SIL-2010-art-87"
mode = "vertical"
features = ["hrss.contribution_months", "tax.monthly_income"]
label = "hrss.pension_elsewhere"
label_holder = "hrss"
rounds = 2
EOF
xgate train sign --job risk-job.toml --key an-hrss.train.key --requester an-hrss --out risk-job.signed.toml
XGATE_API_KEY=$(cat an-hrss.apikey) xgate train submit --job risk-job.signed.toml --gateway https://gw.xgate.test:8443 --gateway-ca ca.cert.pem

# @ agency
# Renewal (certificates live 30 days), while everything keeps running: new keys wait as *.next.
xgate pki request --kind node --agency $AGENCY --out tls --dns $NODE
scp tls/node-$AGENCY.csr.pem ca:requests/

# @ ca for each agency
xgate pki sign --ca ca --request requests/node-$AGENCY.csr.pem --kind node --agency $AGENCY --out issued
scp ca/federation.json $NODE:ca/
scp issued/node-$AGENCY.cert.pem $NODE:

# @ ca
# The directory lists the new signing keys and, until they expire, the previous ones.
scp ca/federation.json gw.xgate.test:ca/

# @ agency
# Running services switch to the new keys and certificate within a second: no restart.
xgate pki install --cert node-$AGENCY.cert.pem --out tls --ca-cert ca/ca.cert.pem --directory ca/federation.json

# @ client
XGATE_API_KEY=$(cat cw-zhou.apikey) xgate check --program dibao --subjects applicants.csv --purpose dibao --legal-basis SAR-2014-art-12 --case-id C-2026-001 --approval-ref $(cat approval.ref) --gateway https://gw.xgate.test:8443 --ca ca.cert.pem --pseudonym-key pseudonym.key --key-file requester.key --signing-key cw-zhou.sign.key
