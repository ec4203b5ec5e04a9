# Who may do what. Input: {"identity": {tenant, subject, roles, app, agent},
#                          "action": "job.submit" | …, "resource": {"tenant": …}}
package glassbox.authz

import rego.v1

default allow := false

role_actions := data.glassbox.roles

granted contains role if {
	some role in input.identity.roles
	input.action in role_actions[role].actions
}

same_tenant if input.identity.tenant == input.resource.tenant

cross_tenant_ok if {
	some role in granted
	role_actions[role].cross_tenant
}

# A token naming a tenant that is not configured is refused everything.
tenant_configured if data.glassbox.tenants[input.identity.tenant]

allow if {
	tenant_configured
	count(granted) > 0
	same_tenant
}

allow if {
	tenant_configured
	cross_tenant_ok
}

reasons contains sprintf("tenant %s is not configured", [input.identity.tenant]) if not tenant_configured

reasons contains sprintf("granted by role %s", [role]) if {
	allow
	some role in granted
}

reasons contains sprintf("no role of %v grants %s", [input.identity.roles, input.action]) if count(granted) == 0

reasons contains "the resource belongs to another tenant" if {
	count(granted) > 0
	not same_tenant
	not cross_tenant_ok
}

decision := {"allow": allow, "reasons": sort([r | some r in reasons])}
