# Whether sandboxed code may reach host:port (default deny).
# Input: {"tenant", "host", "port"}. Asked when a job or session is submitted
# (for each destination it asks for) and again by the egress proxy for every
# connection.
#
# A tenant's `egress` entries: {"host": "api.example.com" | "*.example.com",
# "ports": [443], "private": false}. `*.` matches any name below the domain
# (not the domain itself). `private: true` lets the destination be (or resolve
# to) a loopback, private or link-local address; without it the proxy refuses
# those whatever the name says. The decision names the entry that allowed it
# (`rule`) and whether it allows private addresses.
package glassbox.egress

import rego.v1

default allow := false

# A tenant that is not configured gets nothing (never another tenant's settings).
configured if data.glassbox.tenants[input.tenant]

settings := object.get(data.glassbox.tenants, input.tenant, {})

host := trim_suffix(lower(input.host), ".")

names(entry) if entry.host == host

names(entry) if {
	startswith(entry.host, "*.")
	endswith(host, substring(entry.host, 1, -1))
	count(host) > count(entry.host) - 1
}

matching := [entry |
	some entry in object.get(settings, "egress", [])
	names(entry)
	input.port in entry.ports
]

allow if count(matching) > 0

default rule := null

rule := sprintf("%s:%v", [matching[0].host, matching[0].ports]) if allow

default allow_private := false

allow_private if {
	allow
	object.get(matching[0], "private", false) == true
}

reasons contains sprintf("egress to %s:%d is allowed by %s", [host, input.port, rule]) if allow

reasons contains sprintf("tenant %s is not configured", [input.tenant]) if not configured

reasons contains sprintf("egress to %s:%d is not allowed for tenant %s", [host, input.port, input.tenant]) if {
	configured
	not allow
}

decision := {"allow": allow, "reasons": sort([r | some r in reasons]), "rule": rule, "allow_private": allow_private}
