# Whether sandboxed code may reach host:port (default deny).
# Input: {"tenant", "host", "port"}
package glassbox.egress

import rego.v1

default allow := false

settings := object.get(data.glassbox.tenants, input.tenant, data.glassbox.tenants["default"])

allow if {
	some entry in settings.egress
	entry.host == lower(input.host)
	input.port in entry.ports
}

reasons contains sprintf("egress to %s:%d is allowed", [input.host, input.port]) if allow

reasons contains sprintf("egress to %s:%d is not allowed for tenant %s", [input.host, input.port, input.tenant]) if not allow

decision := {"allow": allow, "reasons": sort([r | some r in reasons])}
