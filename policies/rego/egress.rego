# Whether sandboxed code may reach host:port (default deny).
# Input: {"tenant", "host", "port"}
package glassbox.egress

import rego.v1

default allow := false

# A tenant that is not configured gets nothing (never another tenant's settings).
configured if data.glassbox.tenants[input.tenant]

settings := object.get(data.glassbox.tenants, input.tenant, {})

allow if {
	some entry in object.get(settings, "egress", [])
	entry.host == lower(input.host)
	input.port in entry.ports
}

reasons contains sprintf("egress to %s:%d is allowed", [input.host, input.port]) if allow

reasons contains sprintf("tenant %s is not configured", [input.tenant]) if not configured

reasons contains sprintf("egress to %s:%d is not allowed for tenant %s", [input.host, input.port, input.tenant]) if {
	configured
	not allow
}

decision := {"allow": allow, "reasons": sort([r | some r in reasons])}
