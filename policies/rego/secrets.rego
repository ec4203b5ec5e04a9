# Whether a job may receive a named secret. Input: {"tenant", "secret", "language"}
package glassbox.secrets

import rego.v1

default allow := false

settings := object.get(data.glassbox.tenants, input.tenant, data.glassbox.tenants["default"])

allow if input.secret in settings.secrets

reasons contains sprintf("secret %s is allowed for tenant %s", [input.secret, input.tenant]) if allow

reasons contains sprintf("secret %s is not allowed for tenant %s", [input.secret, input.tenant]) if not allow

decision := {"allow": allow, "reasons": sort([r | some r in reasons])}
