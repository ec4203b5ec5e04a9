# Whether a job or session may receive a named secret, and how.
# Input: {"tenant", "secret", "language", "mode"?} (mode: env (default), file
# or brokered).
#
# A brokered secret stays out of the sandbox: the program gets a placeholder
# and the sandbox's egress proxy puts the value in its place only in requests
# to the destinations the tenant names for it (`brokered_secrets[NAME].hosts`,
# `host:port`). Without such hosts a secret cannot be brokered. The decision
# carries them (`hosts`), and they are recorded with the approval.
package glassbox.secrets

import rego.v1

default allow := false

# A tenant that is not configured gets nothing (never another tenant's settings).
configured if data.glassbox.tenants[input.tenant]

settings := object.get(data.glassbox.tenants, input.tenant, {})

mode := object.get(input, "mode", "env")

listed if input.secret in object.get(settings, "secrets", [])

broker_hosts := object.get(object.get(object.get(settings, "brokered_secrets", {}), input.secret, {}), "hosts", [])

allow if {
	listed
	mode != "brokered"
}

allow if {
	listed
	mode == "brokered"
	count(broker_hosts) > 0
}

default hosts := []

hosts := broker_hosts if {
	allow
	mode == "brokered"
}

reasons contains sprintf("secret %s is allowed for tenant %s", [input.secret, input.tenant]) if {
	allow
	mode != "brokered"
}

reasons contains sprintf("secret %s is brokered for tenant %s to %s", [input.secret, input.tenant, concat(", ", broker_hosts)]) if {
	allow
	mode == "brokered"
}

reasons contains sprintf("tenant %s is not configured", [input.tenant]) if not configured

reasons contains sprintf("secret %s is not allowed for tenant %s", [input.secret, input.tenant]) if {
	configured
	not listed
}

reasons contains sprintf("secret %s has no hosts to be brokered to for tenant %s", [input.secret, input.tenant]) if {
	listed
	mode == "brokered"
	count(broker_hosts) == 0
}

decision := {"allow": allow, "reasons": sort([r | some r in reasons]), "hosts": hosts}
