# Whether a declared package may be installed.
# Input: {"tenant", "ecosystem": "pypi", "name", "version"}
package glassbox.dependencies

import rego.v1

default allow := false

# A tenant that is not configured gets nothing (never another tenant's settings).
configured if data.glassbox.tenants[input.tenant]

settings := object.get(data.glassbox.tenants, input.tenant, {})

default rule := null

allowed := object.get(object.get(object.get(settings, "dependencies", {}), input.ecosystem, {}), lower(input.name), null)

rule := sprintf("%s:%s==*", [input.ecosystem, lower(input.name)]) if allowed == "*"

rule := sprintf("%s:%s==%s", [input.ecosystem, lower(input.name), input.version]) if {
	is_array(allowed)
	input.version in allowed
}

allow if rule != null

reasons contains sprintf("allowed by %s", [rule]) if allow

reasons contains sprintf("tenant %s is not configured", [input.tenant]) if not configured

reasons contains sprintf("%s package %s %s is not on the allowlist of tenant %s", [input.ecosystem, input.name, object.get(input, "version", "(any version)"), input.tenant]) if {
	configured
	not allow
}

decision := {"allow": allow, "reasons": sort([r | some r in reasons]), "rule": rule}
