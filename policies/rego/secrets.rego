# Whether a job may receive a named secret. Input: {"tenant", "secret", "language"}
package glassbox.secrets

import rego.v1

default allow := false

# A tenant that is not configured gets nothing (never another tenant's settings).
configured if data.glassbox.tenants[input.tenant]

settings := object.get(data.glassbox.tenants, input.tenant, {})

allow if input.secret in object.get(settings, "secrets", [])

reasons contains sprintf("secret %s is allowed for tenant %s", [input.secret, input.tenant]) if allow

reasons contains sprintf("tenant %s is not configured", [input.tenant]) if not configured

reasons contains sprintf("secret %s is not allowed for tenant %s", [input.secret, input.tenant]) if {
	configured
	not allow
}

decision := {"allow": allow, "reasons": sort([r | some r in reasons])}
