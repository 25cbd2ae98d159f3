"""Every sentence a user reads, in one place: short, saying what happened and what to do next.

Functions take plain values and return plain text; adapters add their own emphasis.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from bot.durations import format_duration

COMMAND = "/access"

USAGE = {
    "request": f"{COMMAND} <resource> [duration] [reason]   e.g. {COMMAND} prod-db 2h checking replication lag",
    "form": f"{COMMAND}   (opens the request form)",
    "list": f"{COMMAND} list   (your requests and active grants)",
    "revoke": f"{COMMAND} revoke <grant-id>   (end access early)",
    "extend": f"{COMMAND} extend <grant-id> <duration>   e.g. {COMMAND} extend g-7k2m9q4x 1h",
    "help": f"{COMMAND} help",
    "auth": f"{COMMAND} auth <@user|email> [message]   e.g. {COMMAND} auth @bob confirming your password reset",
    "prefs": f"{COMMAND} prefs [pagerduty on|off] [chat on|off]   (how authentication requests reach you)",
    "admin": f"{COMMAND} admin severity <critical|error|warning|info> | pagerduty <on|off> | key | status | test",
}

GENERIC_FAILURE = "Something went wrong on Ackgate's side and nothing was changed. Try again in a minute; if it keeps happening, tell your Ackgate admins."
WORKING = "Checking PagerDuty…"
NO_EMAIL = (
    "Ackgate can't see your email address, so it can't match you to PagerDuty. "
    "Ask a Slack admin to grant the app the users:read.email scope and reinstall it."
)
STORAGE_DOWN = "Ackgate's database is not answering, so nothing was changed. Try again in a minute."


def when(at: datetime) -> str:
    return at.strftime("%H:%M UTC, %d %b")


def usage_for(kind: str) -> str:
    return f"Usage: {USAGE[kind]}"


def help_lines() -> list[str]:
    return [USAGE[k] for k in ("request", "form", "list", "revoke", "extend", "auth", "prefs", "help")]


def reason_too_long(length: int, limit: int) -> str:
    return f"Your reason is {length} characters long; keep it under {limit}. A PagerDuty incident number is a good short reason."


def unknown_resource(name: str, suggestions: Iterable[str], known: Iterable[str]) -> str:
    close = list(suggestions)
    if close:
        return f"There is no resource called “{name}”. Did you mean {' or '.join(close)}?"
    names = sorted(known)
    return f"There is no resource called “{name}”. Resources you can ask for: {', '.join(names) or 'none configured'}."


def duration_out_of_range(asked: timedelta, maximum: timedelta) -> str:
    return f"{format_duration(asked)} is longer than this access allows. Ask for between 1m and {format_duration(maximum)}."


def no_pagerduty_user(email: str) -> str:
    return (
        f"No PagerDuty user has the email {email}. Ask your PagerDuty admin to use the same email as in chat, "
        "or ask a named approver for access."
    )


def pagerduty_down(detail: str) -> str:
    return f"PagerDuty did not answer in time ({detail}), so Ackgate could not check your access and did not grant it. Try again in a minute."


def not_requester_flow(resource: str) -> str:
    return f"No access flow lets you request {resource}. Ask your Ackgate admins which flow covers it."


OWN_REQUEST = "You can't approve or deny your own request. Another eligible approver has to decide."


def refused(resource: str, reasons: dict[str, str]) -> str:
    lines = [f"Access to {resource} was not granted:"]
    lines += [f"• {flow}: {why}" for flow, why in reasons.items()]
    lines.append(
        "Acknowledge the incident you are working on in PagerDuty and ask again, or ask someone on call to request it."
    )
    return "\n".join(lines)


def not_enough_approvers(found: int, required: int) -> str:
    return f"it needs {required} approver(s) other than you, and only {found} can be found right now"


def unknown_request(request_id: str) -> str:
    return f"There is no access request {request_id}. Check the id with /access list."


def unknown_grant(grant_id: str) -> str:
    return f"There is no grant {grant_id}. Your grants and their ids are in /access list."


def not_an_approver(request: object) -> str:
    return "You are not an eligible approver for this request, so your click was not counted."


def already_decided(request: object) -> str:
    from bot.domain import AccessRequest

    assert isinstance(request, AccessRequest)
    verb = request.status.value.replace("_", " ")
    by = f" by {request.decided_by}" if request.decided_by else ""
    return f"This request was already {verb}{by}."


def not_your_grant(grant_id: str) -> str:
    return f"Grant {grant_id} is not yours. Only its holder or an Ackgate admin can change it."


def grant_not_active(grant: object) -> str:
    from bot.domain import Grant

    assert isinstance(grant, Grant)
    state = {
        "ended": "has already ended",
        "revoking": "is already being revoked",
        "failed": "was never provisioned",
        "provisioning": "is still being provisioned",
    }.get(grant.status.value, f"is {grant.status.value}")
    return f"Grant {grant.id} {state}."


def flow_gone(flow: str) -> str:
    return f"The access flow {flow} is no longer in the policy, so this grant can't be extended. Request access again."


def extension_too_long(extra: timedelta, maximum: timedelta, room: timedelta) -> str:
    if room <= timedelta(0):
        return f"This grant already has its maximum length of {format_duration(maximum)}. Request access again when it ends."
    return f"{format_duration(extra)} is too long: this access lasts at most {format_duration(maximum)}, so you can extend by up to {format_duration(room)}."


def extension_refused(resource: str, reason: str) -> str:
    return f"Your access to {resource} can't be extended: {reason}."


# --- Slack adapter ---

SLACK_FORM_TITLE = "Request access"  # Slack caps modal titles, submit and close labels at 24 characters
SLACK_FORM_SUBMIT = "Request"
SLACK_FORM_CLOSE = "Cancel"
SLACK_FORM_RESOURCE = "Resource"
SLACK_FORM_RESOURCE_PLACEHOLDER = "Choose what you need"
SLACK_FORM_DURATION = "For how long"
SLACK_FORM_DURATION_HINT = "A number and a unit, such as 30m, 2h or 1h30m."
SLACK_FORM_REASON = "Reason"
SLACK_FORM_REASON_HINT = "Say why you need access. A PagerDuty incident you have acknowledged counts as a reason."
SLACK_FORM_RESOURCE_MISSING = "Choose a resource."
SLACK_FORM_NO_RESOURCES = (
    "No resources are configured yet, so there is nothing to request. Ask your Ackgate admins to add some."
)
SLACK_FORM_TOO_MANY_RESOURCES = (
    "Only the first 100 resources fit in this list. For another one, type /access <resource> [duration] [reason]."
)
SLACK_FORM_NOT_OPENED = (
    "Slack did not open the request form. Run /access again, or type /access <resource> [duration] [reason]."
)
SLACK_BUTTON_WITHOUT_TARGET = (
    "That button does not say which request it belongs to, so nothing was done. Use /access list to see your requests."
)
SLACK_BUTTON_UNKNOWN = "That button does nothing in this version of Ackgate. Use /access help to see what you can do."
SLACK_BAD_REQUEST = "Ackgate could not read that request from Slack, so nothing was done."


def slack_refused(method: str, error: str) -> str:
    return (
        f"Slack refused {method} ({error}). Check that the Ackgate app is installed in this workspace "
        "with the scopes in its manifest, then try again."
    )


def slack_unreachable(method: str) -> str:
    return f"Ackgate could not reach Slack for {method}. Try again in a minute."
