# Workflow approval gates. Two questions (input.question):
#   "gate":    {"tenant", "workflow", "step", "secrets": [...], "requested": bool}
#              allow: the step may run without approval; otherwise the reasons
#              say why it needs one (the step asked for it, or it uses a secret
#              whose name starts with one of the tenant's approval prefixes).
#   "approve": {"tenant", "workflow", "step", "secrets": [...],
#               "approver": {"id", "roles"}, "submitter"}
#              allow: this approver may answer for the step (they have the
#              tenant's approver role and did not submit the run).
package glassbox.workflows

import rego.v1

default allow := false

configured if data.glassbox.tenants[input.tenant]

settings := object.get(data.glassbox.tenants, input.tenant, {})

approval := object.get(settings, "workflow_approval", {})

prefixes := object.get(approval, "secret_prefixes", [])

approver_role := object.get(approval, "approver_role", "approver")

sensitive contains s if {
	some s in object.get(input, "secrets", [])
	some p in prefixes
	startswith(s, p)
}

gate if input.question == "gate"

answer if input.question == "approve"

allow if {
	gate
	configured
	not input.requested
	count(sensitive) == 0
}

reasons contains sprintf("step %s needs no approval", [input.step]) if {
	gate
	allow
}

reasons contains sprintf("step %s asks for approval", [input.step]) if {
	gate
	input.requested
}

reasons contains sprintf("step %s uses secret %s: approval by role %s required", [input.step, s, approver_role]) if {
	gate
	some s in sensitive
}

is_approver if approver_role in object.get(object.get(input, "approver", {}), "roles", [])

allow if {
	answer
	configured
	is_approver
	input.approver.id != input.submitter
}

reasons contains sprintf("%s may answer for step %s", [input.approver.id, input.step]) if {
	answer
	allow
}

reasons contains sprintf("%s has no role %s", [input.approver.id, approver_role]) if {
	answer
	not is_approver
}

reasons contains sprintf("%s submitted the run and may not approve its steps", [input.approver.id]) if {
	answer
	input.approver.id == input.submitter
}

reasons contains sprintf("tenant %s is not configured", [input.tenant]) if not configured

reasons contains "unknown question" if {
	not gate
	not answer
}

decision := {"allow": allow, "reasons": sort([r | some r in reasons])}
