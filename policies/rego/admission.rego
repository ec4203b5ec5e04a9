# Whether a job may run (or a session may open), and with which limits.
# Input: {"tenant", "kind": "job" | "session" (default "job"), "language",
#         "limits": {…requested, integers}, "dependencies": [...], "secrets": [...],
#         "open_sessions": n (sessions only: the tenant's sessions not yet ended)}
# Jobs use the tenant's default_limits/max_limits; sessions their own
# session_default_limits/session_max_limits and max_sessions.
package glassbox.admission

import rego.v1

default allow := false

# A tenant that is not configured gets nothing (never another tenant's settings).
configured if data.glassbox.tenants[input.tenant]

settings := object.get(data.glassbox.tenants, input.tenant, {})

kind := object.get(input, "kind", "job")

maxima := object.get(settings, "session_max_limits", {}) if kind == "session"

else := object.get(settings, "max_limits", {})

defaults := object.get(settings, "session_default_limits", {}) if kind == "session"

else := object.get(settings, "default_limits", {})

requested := object.get(input, "limits", {})

# Requested limits fill in the tenant's defaults.
effective_limits := object.union(defaults, {k: v |
	some k, v in requested
	v != null
})

reasons contains sprintf("tenant %s is not configured", [input.tenant]) if not configured

reasons contains sprintf("language %s is not allowed for tenant %s", [input.language, input.tenant]) if {
	configured
	not input.language in settings.languages
}

reasons contains sprintf("%s %d exceeds the tenant maximum %d", [k, v, maxima[k]]) if {
	some k, v in effective_limits
	v > maxima[k]
}

reasons contains sprintf("unknown limit %s", [k]) if {
	configured
	some k, _ in requested
	not maxima[k]
}

reasons contains sprintf("too many dependencies (%d > %d)", [count(deps), settings.max_dependencies]) if {
	configured
	deps := object.get(input, "dependencies", [])
	count(deps) > settings.max_dependencies
}

reasons contains sprintf("tenant %s has %d open sessions (at most %d)", [input.tenant, input.open_sessions, settings.max_sessions]) if {
	configured
	kind == "session"
	input.open_sessions >= settings.max_sessions
}

reasons contains sprintf("unknown kind %s", [kind]) if not kind in {"job", "session"}

allow if count(reasons) == 0

decision := {
	"allow": allow,
	"reasons": sort([r | some r in reasons]),
	"effective_limits": effective_limits,
}
