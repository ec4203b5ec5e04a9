# Who may reach a port a session exposes in service mode (through the control
# plane; nothing reaches a session's port any other way).
# Input: {"tenant" (the session's), "caller": {"tenant", "subject", "roles",
# "app"}, "port", "exposure": {"roles", "subjects", "apps"}}.
#
# Only callers of the session's tenant; an exposure that names roles, subjects
# or apps lets through a caller with any of those roles, or that subject or
# app; one that names none lets through any caller of the tenant. The
# decision also carries the tenant's rate (`service_rate_per_sec`, default 20
# requests a second for all of its exposed ports).
package glassbox.services

import rego.v1

default allow := false

configured if data.glassbox.tenants[input.tenant]

settings := object.get(data.glassbox.tenants, input.tenant, {})

same_tenant if input.caller.tenant == input.tenant

exposure := object.get(input, "exposure", {})

roles := object.get(exposure, "roles", [])

subjects := object.get(exposure, "subjects", [])

apps := object.get(exposure, "apps", [])

open_to_tenant if {
	count(roles) == 0
	count(subjects) == 0
	count(apps) == 0
}

named if {
	some r in object.get(input.caller, "roles", [])
	r in roles
}

named if input.caller.subject in subjects

named if {
	input.caller.app != null
	input.caller.app in apps
}

allow if {
	configured
	same_tenant
	open_to_tenant
}

allow if {
	configured
	same_tenant
	named
}

rate_per_sec := object.get(settings, "service_rate_per_sec", 20)

reasons contains sprintf("port %v of a session of tenant %s is open to its callers", [input.port, input.tenant]) if {
	allow
	open_to_tenant
}

reasons contains sprintf("%s may reach port %v as the exposure names it", [input.caller.subject, input.port]) if {
	allow
	not open_to_tenant
}

reasons contains sprintf("tenant %s is not configured", [input.tenant]) if not configured

reasons contains sprintf("the service belongs to another tenant than %s", [input.caller.tenant]) if {
	configured
	not same_tenant
}

reasons contains sprintf("%s has no role, subject or app the exposure of port %v names", [input.caller.subject, input.port]) if {
	configured
	same_tenant
	not open_to_tenant
	not named
}

decision := {"allow": allow, "reasons": sort([r | some r in reasons]), "effective_limits": {"rate_per_sec": rate_per_sec}}
