"""Every sentence a user reads, in one place: short, saying what happened and what to do next.

Functions take plain values and return plain text; adapters add their own emphasis.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from bot.core.durations import format_duration

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
    "admin": f"{COMMAND} admin severity <critical|error|warning|info> | pagerduty <on|off> | resolve <on|off> | key | status | test",
}

GENERIC_FAILURE = "Something went wrong on Ackgate's side and nothing was changed. Try again in a minute; if it keeps happening, tell your Ackgate admins."
WORKING = "Checking PagerDuty…"
PAGERDUTY_QUEUED = (
    "Queued: PagerDuty is busy, so your request is waiting its turn under PagerDuty's rate limit. "
    "The answer will appear here; there is no need to ask again."
)
SLACK_BUSY = "Ackgate is too busy to start on this right now, so nothing was done. Try again in a minute."
NO_EMAIL = (
    "Ackgate can't see your email address, so it can't match you to PagerDuty. "
    "Ask a chat admin to make emails visible to the Ackgate app."
)
STORAGE_DOWN = "Ackgate's database is not answering, so nothing was changed. Try again in a minute."


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def when(at: datetime) -> str:
    """``14:05 UTC, 04 Dec``, in English whatever the process's locale (strftime's ``%b`` is not)."""
    return f"{at.hour:02d}:{at.minute:02d} UTC, {at.day:02d} {_MONTHS[at.month - 1]}"


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


def allowed_durations(minimum: timedelta, maximum: timedelta) -> str:
    return f"Ask for between {format_duration(minimum)} and {format_duration(maximum)}."


def duration_out_of_range(asked: timedelta, maximum: timedelta, *, minimum: timedelta = timedelta(minutes=1)) -> str:
    side = "shorter" if asked < minimum else "longer"
    return f"{format_duration(asked)} is {side} than this access allows. {allowed_durations(minimum, maximum)}"


def no_pagerduty_user(email: str) -> str:
    return (
        f"No PagerDuty user has the email {email}. Ask your PagerDuty admin to use the same email as in chat, "
        "or ask a named approver for access."
    )


def pagerduty_down(detail: str) -> str:
    return f"PagerDuty did not answer in time ({detail}), so Ackgate could not check your access and did not grant it. Try again in a minute."


def not_requester_flow(resource: str) -> str:
    return f"No access flow lets you request {resource}. Ask your Ackgate admins which flow covers it."


KEY_FORM_TITLE = "Integration key"
KEY_FORM_LABEL = "Events API v2 integration key"
KEY_FORM_HINT = "In PagerDuty: the service → Integrations → Events API V2 → Integration Key (32 characters). It is stored encrypted and never shown again."

HELP_TITLE = "Ackgate: just-in-time access"
NOT_CONFIGURED = "That feature is not set up on this Ackgate. Ask your Ackgate admins."
FORM_NO_INCIDENT = "You have no acknowledged PagerDuty incident right now."


def incident_reason(number: int, title: str) -> str:
    return f"PagerDuty incident #{number} {title}"


def form_found_incident(number: int, title: str) -> str:
    return f"Found your acknowledged incident #{number}: {title}"


def you_denied(requester: str, resource: str) -> str:
    return f"You denied {requester}'s request for {resource}"


def you_approved(requester: str, resource: str) -> str:
    return f"You approved {requester}'s access to {resource}"


def approval_recorded(left: int) -> str:
    return f"Approval recorded; {left} more needed"


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
    from bot.core.domain import AccessRequest

    assert isinstance(request, AccessRequest)
    return request_already(request.status.value, request.decided_by)


def not_your_grant(grant_id: str) -> str:
    return f"Grant {grant_id} is not yours. Only its holder or an Ackgate admin can change it."


def grant_not_active(grant: object) -> str:
    from bot.core.domain import Grant

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


# --- What a lost compare-and-set or a taken id says (storage/codec.py) ---
# Shown to the person who clicked; they say who got there first when known.

_REQUEST_ALREADY = {
    "approved": "This request was already approved",
    "denied": "This request was already denied",
    "refused": "This request was already refused",
    "cancelled": "This request was already cancelled",
    "timed_out": "This request has already timed out",
    "pending": "This request is still pending",
}


def request_already(status: str, by: str | None) -> str:
    """A request found in ``status`` (a RequestStatus value), put there by ``by`` when known."""
    said_by = f" by {by}" if by and status not in ("timed_out", "pending") else ""
    return _REQUEST_ALREADY.get(status, f"This request is {status}") + said_by + "."


REQUEST_HAS_GRANT = "This request already has its grant."

_GRANT_ALREADY = {
    "provisioning": "This grant is still being set up.",
    "active": "This grant is already active.",
    "revoking": "This grant is already being revoked.",
    "ended": "This grant has already ended.",
    "failed": "This grant could not be set up.",
}


def grant_already(status: str) -> str:
    """A grant found in ``status`` (a GrantStatus value) by a transition that expected another."""
    return _GRANT_ALREADY.get(status, f"This grant is {status}.")


GRANT_EXPIRY_MOVED = "This grant's expiry changed meanwhile. Check it and try again."

_TRANSACTION_ALREADY = {
    "verified": "This request was already verified.",
    "denied": "This request was already denied.",
    "expired": "This link has expired.",
    "pending": "This request is still waiting for an answer.",
}


def transaction_already(status: str) -> str:
    """An authentication request found in ``status`` (an AuthStatus value)."""
    return _TRANSACTION_ALREADY.get(status, f"This request is {status}.")


def not_stored(kind: str, ident: str) -> str:
    """Nothing of ``kind`` ("request", "grant", "authentication request") has the id ``ident``."""
    return f"No {kind} has the id {ident}."


# --- the storage backends, for the operator (logs, start-up refusals) ----------------------------


def unknown_database_url(shown: str) -> str:
    """``shown``: the URL's scheme only (the rest may carry a password)."""
    return (
        f"ACKGATE_DATABASE_URL is not a database URL Ackgate knows ({shown}): use sqlite:///path/to/ackgate.db "
        "(sqlite:////abs/path.db for an absolute path) or postgresql://user@host:5432/dbname."
    )


def store_not_open(backend: str) -> str:
    """A store used before ``open()`` (or after ``close()``): a programming error, said plainly."""
    return f"The {backend} store is not open. Call open() before using it."


def several_rows_outside_transaction(doing: str) -> str:
    return f"Could not {doing}: several rows are written in one transaction."


def sqlite_cannot_open(path: str, detail: object) -> str:
    return (
        f"Could not open the SQLite database {path}: {detail}. "
        "Check ACKGATE_DATABASE_URL and that the directory exists and is writable."
    )


def sqlite_failed(doing: str, path: str, detail: object) -> str:
    return (
        f"Could not {doing} in the SQLite database {path}: {detail}. Check the file's permissions and free disk space."
    )


POSTGRES_BAD_URL = (
    "ACKGATE_DATABASE_URL is not a valid PostgreSQL URL: use postgresql://user:password@host:5432/dbname."
)


def postgres_cannot_connect(where: str, detail: object) -> str:
    return (
        f"Could not connect to PostgreSQL at {where}: {detail}. "
        "Check ACKGATE_DATABASE_URL and that the database is running."
    )


def postgres_failed(doing: str, where: str, detail: object) -> str:
    return f"Could not {doing} in PostgreSQL at {where}: {detail}. Check that the database is running and reachable."


def id_taken(what: str) -> str:
    """An insert whose id is already stored; ``what`` names it (``request r-1``)."""
    return f"Could not save {what}: that id is already taken."


def transaction_taken(transaction_id: str, *, token: bool) -> str:
    """A duplicate authentication request: its id, or (``token``) its link's hash."""
    taken = "its link token is already in use" if token else "that id is already taken"
    return f"Could not save authentication request {transaction_id}: {taken}."


# --- Requests and grants (bot/core/cards.py) ---

APPROVE = "Approve"
DENY = "Deny"
TIMED_OUT = "Timed out: nobody decided in time"
TIMED_OUT_TEXT = "Nobody approved it in time. Ask again, or reach an approver directly."
CANCELLED = "Cancelled"
REFUSED = "Refused"
REVOKING_TEXT = "The provisioner did not confirm yet; Ackgate keeps retrying until it does."
NOTHING_TO_LIST = "You have no requests or active grants"
NOTHING_TO_LIST_TEXT = "Ask with /access <resource> [duration] [reason]."
LIST_TITLE = "Your access"


def approval_footnote(request_id: str) -> str:
    return f"Request {request_id}. Only eligible approvers' clicks count, and never the requester's."


def approval_title(requester: str, resource: str) -> str:
    return f"{requester} requests {resource}"


def approved_by(who: str | None) -> str:
    return f"Approved by {who}"


def denied_by(who: str | None) -> str:
    return f"Denied by {who}"


def decided_title(requester: str, resource: str, outcome: str, decided: str) -> str:
    return f"{requester} requested {resource}: {outcome}{decided}"


def pending_title(resource: str) -> str:
    return f"Waiting for approval: {resource}"


def pending_text(request_id: str, required: int, who: str) -> str:
    return f"Your request {request_id} needs {required} approval(s) from: {who}."


def granted_title(resource: str, until: datetime) -> str:
    return f"Access granted: {resource} until {when(until)}"


def granted_footnote(grant_id: str) -> str:
    return f"Done early? /access revoke {grant_id}   Need longer? /access extend {grant_id} 30m"


def failed_title(resource: str) -> str:
    return f"Access to {resource} could not be provisioned"


def failed_text(error: str) -> str:
    return f"{error} Nothing was granted. Try again, or tell your Ackgate admins if it keeps failing."


def your_request_denied(resource: str, by: str | None) -> str:
    return f"Your request for {resource} was denied by {by}"


def your_request_timed_out(resource: str) -> str:
    return f"Your request for {resource} timed out"


def ended_title(resource: str, reason: str) -> str:
    return f"Your access to {resource} {reason}"


def ask_again(resource: str) -> str:
    return f"Need it again? /access {resource}"


NO_APPROVER_REACHED = " None of them could be reached in chat; ask one of them to run /access list, or try again later."


def revoked_title(resource: str) -> str:
    return f"Access to {resource} revoked"


def revoking_title(resource: str) -> str:
    return f"Revoking access to {resource}"


# --- Slack adapter ---

SLACK_EMAIL_HIDDEN_FIX = "Ask a Slack admin to grant the app the users:read.email scope and reinstall it."
SLACK_NO_EMAIL = f"Ackgate can't see your email address, so it can't match you to PagerDuty. {SLACK_EMAIL_HIDDEN_FIX}"
# What an admin does when a platform hides emails, by platform (a platform's adapter section adds its own).
EMAIL_HIDDEN_FIX = {"slack": SLACK_EMAIL_HIDDEN_FIX, "teams": "Ask a Teams admin to check the person's email address."}

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


# --- Incident mirroring ---

_MIRROR_STATUS = {"triggered": "Triggered", "acknowledged": "Acknowledged", "resolved": "Resolved"}


def mirror_title(number: int, title: str) -> str:
    return f"PagerDuty incident #{number}: {title}" if number else f"PagerDuty incident: {title}"


def mirror_status(status: str, acknowledged_by: str) -> str:
    shown = _MIRROR_STATUS.get(status, status.capitalize())
    return f"{shown} by {acknowledged_by}" if status == "acknowledged" and acknowledged_by else shown


MIRROR_OPEN = "Open in PagerDuty"


def mirror_transaction(target: str, status: str, decided_at: datetime | None) -> str:
    """The linked authentication request's state, e.g. ``bob@example.com: verified at 12:04 UTC, 23 Nov``."""
    shown = {"pending": "waiting for an answer", "expired": "expired unanswered"}.get(status, status)
    at = f" at {when(decided_at)}" if decided_at is not None and status in ("verified", "denied") else ""
    return f"{target}: {shown}{at}"


# --- Incident notes ---


def note_granted(*, resource: str, holder: str, until: datetime, approved_by: Iterable[str], grant_id: str) -> str:
    approvers = ", ".join(approved_by)
    how = f"approved by {approvers}" if approvers else "approved automatically by policy"
    return f"Ackgate: access to {resource} granted to {holder} until {when(until)}, {how} (grant {grant_id})."


def note_extended(*, resource: str, holder: str, until: datetime, by: str, grant_id: str) -> str:
    return f"Ackgate: access to {resource} for {holder} extended until {when(until)} by {by} (grant {grant_id})."


def note_ended(*, resource: str, holder: str, reason: str, by: str | None, grant_id: str) -> str:
    why = {
        "expired": "expired",
        "revoked": f"was revoked by {by}" if by else "was revoked",
        "incident_resolved": "was revoked because this incident was resolved",
    }.get(reason, "ended")
    return f"Ackgate: access to {resource} for {holder} {why} (grant {grant_id})."


# --- Authentication requests ---

AUTH_LINK_TEXT = "Verify or deny"
AUTH_PAGERDUTY_OFF = "PagerDuty is turned off for this organisation"
AUTH_PAGERDUTY_NO_KEY = "no PagerDuty integration key is set (an admin can add one with /access admin key)"
AUTH_CHANNEL_NAMES = {"pagerduty": "PagerDuty", "chat": "chat"}


def auth_unknown_target(target: str) -> str:
    return f"Ackgate can't find the user {target}. Mention them as @name or give their work email. {usage_for('auth')}"


def auth_target_no_email(who: str, platform: str = "") -> str:
    fix = EMAIL_HIDDEN_FIX.get(platform, "Ask a chat admin to make emails visible to the Ackgate app.")
    return f"Ackgate can't see {who}'s email address, so it can't send them an authentication request. {fix}"


def auth_context(platform: str, at: datetime) -> str:
    return f"Asked in {platform.capitalize()} at {when(at)}"


def auth_pagerduty_failed(detail: str) -> str:
    return f"PagerDuty could not be used: {detail.rstrip('.')}"


def auth_not_in_pagerduty(email: str) -> str:
    return f"{email} isn't a PagerDuty user"


def auth_sent_by_chat(reason: str) -> str:
    return f"Sent by chat because {reason or 'PagerDuty could not be used'}."


def auth_unreachable(target: str, detail: str) -> str:
    return (
        f"Ackgate could not reach {target} by PagerDuty or chat ({detail.rstrip('.')}), so the request was "
        "cancelled. Try again in a minute, or contact them another way."
    )


def auth_reached(channels: Iterable[str]) -> str:
    names = [AUTH_CHANNEL_NAMES.get(c, c) for c in channels]
    return " and ".join(names) if names else "nobody"


def auth_pending_title(target: str) -> str:
    return f"Authentication request sent to {target}"


def auth_pending_text(expires_at: datetime) -> str:
    return f"Waiting for them to verify or deny. The link expires at {when(expires_at)}."


def auth_verified(target: str, at: datetime) -> str:
    return f"Identity verified by {target} at {when(at)}"


def auth_denied(target: str, at: datetime) -> str:
    return f"Authentication request denied by {target} at {when(at)}"


def auth_expired(target: str) -> str:
    return f"Authentication request to {target} expired unanswered"


def auth_target_title(requester: str) -> str:
    return f"{requester} asks you to confirm your identity"


AUTH_TARGET_TEXT = (
    "Open the link to verify that it is really you, or to deny it. It works once and expires soon. "
    "If you did not expect this, deny it."
)


def auth_target_done(status: str, at: datetime | None) -> str:
    shown = {"verified": "You verified it", "denied": "You denied it", "expired": "It expired unanswered"}
    return shown.get(status, status) + (f" at {when(at)}." if at is not None and status != "expired" else ".")


# The verification page (handlers/web.py)
AUTH_PAGE_TITLE = "Authentication request"
AUTH_PAGE_ASK = "Someone asked Ackgate to confirm that you are you. Verify only if you expected this request."
AUTH_PAGE_FOR = "For"
AUTH_PAGE_FROM = "Requested by"
AUTH_PAGE_MESSAGE = "Message"
AUTH_PAGE_CONTEXT = "Context"
AUTH_PAGE_EXPIRES = "Link expires"
AUTH_PAGE_VERIFY = "Verify, it's me"
AUTH_PAGE_DENY = "Deny"
AUTH_PAGE_VERIFIED = "Verified. The requester has been told; you can close this page."
AUTH_PAGE_DENIED = "Denied. The requester has been told; you can close this page."
AUTH_PAGE_INVALID = (
    "This link is not valid. Check that you opened the whole link from your PagerDuty incident or chat message."
)
AUTH_PAGE_EXPIRED = "This link has expired, and nothing was changed. Ask the requester to send a new request."
AUTH_PAGE_USED = "This link has already been used, and can't be used again. Nothing was changed."
AUTH_PAGE_FORBIDDEN = "This form could not be verified (it may be stale or sent from another site), so nothing was changed. Open the link again and choose once more."
AUTH_PAGE_BAD_DECISION = "Choose Verify or Deny. Nothing was changed."
AUTH_PAGE_ERROR = "Something went wrong on Ackgate's side, and nothing was changed. Try again in a minute; if it keeps happening, tell your Ackgate admins."
AUTH_PAGE_BAD_REQUEST = (
    "Ackgate could not read that form, so nothing was changed. Open the link again and choose once more."
)
AUTH_PAGE_POSSESSION = (
    "This page does not ask who you are: whoever holds this link can answer it, so having the link is the proof. "
    "Answer only if you are the person it is for; if it was forwarded to you, don't answer it."
)
AUTH_PAGE_SIGN_IN = "Sign in to answer"
AUTH_PAGE_SIGN_IN_AGAIN = "Sign in with another account"
AUTH_PAGE_SIGN_IN_FIRST = (
    "Sign in first: only the person this request is for can answer it, so nothing was changed. "
    "Open the link again and sign in."
)
AUTH_PAGE_SIGN_IN_FAILED = (
    "Ackgate could not confirm your sign-in, so nothing was changed. Open the link again and sign in once more."
)
AUTH_PAGE_SIGN_IN_STALE = (
    "This sign-in has expired, was already used, or was started in another browser, so nothing was changed. "
    "Open the link again in this browser and sign in."
)
AUTH_PAGE_SIGN_IN_CANCELLED = (
    "The sign-in was cancelled or refused at your identity provider, so nothing was changed. "
    "Open the link again to try once more."
)
AUTH_PAGE_PROVIDER_DOWN = (
    "Ackgate can't reach your identity provider right now, so nothing was changed. "
    "Try again in a minute; if it keeps happening, tell your Ackgate admins."
)


def auth_page_sign_in_ask(target: str) -> str:
    return f"Someone asked Ackgate to confirm that you are {target}. Sign in with your company account to verify or deny it: only {target} can answer."


def auth_page_signed_in_as(email: str) -> str:
    return f"Signed in as {email}."


def auth_page_wrong_user(signed_in: str, target: str) -> str:
    return (
        f"You are signed in as {signed_in}, and this request is for {target}, so you can't answer it. "
        f"Nothing was changed. If you are {target}, sign in with that account; otherwise ignore this request."
    )


def auth_page_unverified(email: str) -> str:
    return (
        f"Your identity provider has not verified the email address {email}, so Ackgate can't tell that this "
        "request is for you. Nothing was changed. Ask your identity provider's admins to verify it."
    )


# --- Administration ---

ADMIN_WHO = "ACKGATE_ADMINS or the admin user group"


def admin_refused(action: str) -> str:
    return (
        f"Only Ackgate admins can use {COMMAND} admin {action}, so nothing was changed. "
        f"Ask an admin ({ADMIN_WHO}) to do it for you."
    )


def severity_changed(old: str, new: str) -> str:
    if old == new:
        return f"Authentication incidents already have severity {new}; nothing changed."
    return f"Authentication incidents now have severity {new} (was {old})."


def resolve_switched(enabled: bool, was: bool) -> str:
    state = "on" if enabled else "off"
    already = " (it already was)" if enabled == was else ""
    return f"Resolving authentication incidents when they end is {state}{already}"


RESOLVE_ON_TEXT = (
    "When an authentication request is verified, denied or expires, Ackgate resolves its PagerDuty incident."
)
RESOLVE_OFF_TEXT = "Ackgate leaves authentication incidents open for your responders to resolve."


def pagerduty_switched(enabled: bool, was: bool) -> str:
    state = "on" if enabled else "off"
    if enabled == was:
        return f"The PagerDuty integration is already {state}; nothing changed."
    return f"The PagerDuty integration is now {state}."


PAGERDUTY_ON_TEXT = (
    "Authentication requests page users through PagerDuty when their /access prefs allow it, and fall back to chat."
)
PAGERDUTY_OFF_TEXT = (
    "Authentication requests now reach every user by chat direct message, whatever their PagerDuty preference."
)

KEY_FORM_OPEN_TITLE = "Paste the PagerDuty integration key"
KEY_FORM_OPEN_BUTTON = "Paste key"
KEY_SAVED_TITLE = "PagerDuty integration key saved"
KEY_SAVED_TEXT = "It is stored encrypted and is only ever shown masked, as below."
KEY_ENV_WINS = (
    "PAGERDUTY_INTEGRATION_KEY is set in Ackgate's environment, and the environment wins: that key is still the one "
    "in use. Remove it from the environment and restart Ackgate to use the key you saved."
)
KEY_CANNOT_BE_STORED = (
    "Ackgate can't store the integration key because ACKGATE_SECRET_KEY is not set, and keys are only stored "
    'encrypted. Set ACKGATE_SECRET_KEY (16 characters or more; python -c "import secrets; '
    'print(secrets.token_urlsafe(32))" makes one), restart Ackgate and paste the key again. Nothing was saved.'
)
KEY_NONE = f"None: add one with {COMMAND} admin key"
KEY_UNREADABLE = (
    "Stored, but unreadable with the current ACKGATE_SECRET_KEY: restore the old one, or paste the key again"
)
_KEY_SOURCES = {"environment": "from PAGERDUTY_INTEGRATION_KEY", "stored": "stored encrypted"}


def key_shown(masked: str, source: str) -> str:
    return f"{masked} ({_KEY_SOURCES.get(source, source)})"


STATUS_TITLE = "Ackgate status"
STATUS_NOT_INVOKED = "Not yet invoked"


def status_success(at: datetime | None, *, what: str = "last call") -> str:
    return f"Success, {what} at {when(at)}" if at is not None else "Success"


def status_error(at: datetime | None, detail: str) -> str:
    where = f" at {when(at)}" if at is not None else ""
    return f"Error{where}: {detail}" if detail else f"Error{where}"


def status_unchecked(detail: str) -> str:
    return f"Could not be checked: {detail}"


WEBHOOKS_NONE = "No event received yet"


def webhooks_status(last_event_at: datetime | None, *, failures: int, last_failure_at: datetime | None) -> str:
    seen = f"Last event at {when(last_event_at)}" if last_event_at is not None else WEBHOOKS_NONE
    if not failures:
        return f"{seen}; signatures OK"
    latest = f", the latest at {when(last_failure_at)}" if last_failure_at is not None else ""
    return (
        f"{seen}; {failures} delivery(ies) failed the signature check since the last good one{latest}. "
        "Check that PAGERDUTY_WEBHOOK_SECRET matches the subscription's secret: PagerDuty disables a "
        "subscription after 3 failed deliveries"
    )


TEST_UNAVAILABLE = (
    "The test is not available in this deployment: authentication requests are not set up. "
    f"Check the set-up with {COMMAND} admin status."
)

PREFS_TITLE = "How authentication requests reach you"
PREFS_SAVED_TITLE = "Your preferences are saved"


def on_off(value: bool) -> str:
    return "on" if value else "off"


def prefs_how_to_change() -> str:
    return f"To change them: {USAGE['prefs']}"


PREFS_BOTH_OFF = "With both off, requests still reach you by chat direct message, so you are never unreachable."


# --- The last-resort answers of every entry point (handlers/guard.py) ---

GUARD_BAD_REQUEST = "Ackgate could not read this request, so nothing was done. Check its format and send it again."
GUARD_NOT_FOUND = "There is nothing at this address on Ackgate. Check the address."
GUARD_METHOD_NOT_ALLOWED = "This address on Ackgate does not accept that method."
GUARD_TOO_LARGE = "The request body is larger than Ackgate accepts, so nothing was done."
GUARD_ERROR = (
    "Something went wrong on Ackgate's side, and it was logged. Nothing more was done. "
    "Try again in a minute; if it keeps happening, tell your Ackgate admins."
)


def guard_status(status: int) -> str:
    return f"Ackgate refused this request (HTTP {status}), so nothing was done."


# --- Slack's entry point, hardened (issue 6) ----------------------------------------------------

AUTH_SENDING = "Sending your authentication request…"
SLACK_UNSIGNED = "Ackgate could not verify that this request came from Slack, so nothing was done."
SLACK_TOO_LARGE = "That request is larger than anything Slack sends, so Ackgate did not read it."
KEY_FORM_INTERRUPTED = (
    "Ackgate restarted while saving the integration key you pasted, so it may not have been stored. "
    "Check with /access admin status, and run /access admin key again if it is not set."
)


def command_interrupted(text: str) -> str:
    shown = f"{COMMAND} {text}".strip()
    return (
        f"Ackgate restarted while handling {shown}, so it may or may not have been done. "
        f"Check with {COMMAND} list and your direct messages before trying again."
    )


def request_found_after_restart(resource: str, request_id: str, status: str) -> str:
    return (
        f"Ackgate restarted while handling your request for {resource}. It was recorded as {request_id} "
        f"and is {status.replace('_', ' ')}. Use {COMMAND} list to follow it."
    )


def auth_pagerduty_slow(seconds: float) -> str:
    return f"PagerDuty did not answer within {seconds:g} s"


SLACK_NOT_HANDLED = "Ackgate does not handle that Slack command or interaction, so nothing was done."


# --- delivery queues (webhook inbox, chat outbox) in /access admin status ----------------------

DELIVERIES = "Deliveries"


def deliveries_status(*, parked_webhooks: int, queued_messages: int) -> str:
    """The admin status line for events given up on and chat messages still waiting."""
    webhooks = (
        "no PagerDuty webhook event parked"
        if not parked_webhooks
        else f"{parked_webhooks} PagerDuty webhook event(s) failed repeatedly and are parked (the log says why)"
    )
    chat = (
        "no chat message waiting"
        if not queued_messages
        else f"{queued_messages} chat message(s) waiting to be sent again (Slack refused or was unreachable)"
    )
    return f"{webhooks}; {chat}"


# --- Microsoft Teams (Bot Connector) ---


def teams_blocked(operation: str) -> str:
    return (
        f"Teams refused {operation}: the Ackgate app is blocked or not installed for that person or chat. "
        "Ask them to add the Ackgate app in Teams, then try again."
    )


def teams_not_found(operation: str) -> str:
    return f"Teams could not find the chat, message or person for {operation}. It may have been deleted."


def teams_refused(operation: str, code: str) -> str:
    return f"Teams refused {operation} ({code}). Check the Ackgate app's registration and installation, then try again."


def teams_unreachable(operation: str) -> str:
    return f"Ackgate could not reach Teams for {operation}. Try again in a minute."


def teams_token_failed(detail: str) -> str:
    return (
        f"Ackgate could not sign in to the Bot Framework ({detail}). Check MICROSOFT_APP_ID, "
        "MICROSOFT_APP_PASSWORD and MICROSOFT_APP_TENANT_ID against the Azure Bot registration."
    )


TEAMS_UNTRUSTED_SERVICE_URL = (
    "Ackgate did not send this Teams message: its service address did not come from Teams. "
    "Ask the person to message the Ackgate bot once, then try again."
)
TEAMS_CARD_ACTION_INVALID = (
    "That button's data is not valid, so nothing was done. Use the buttons on the latest Ackgate card, "
    f"or type {COMMAND} list."
)
TEAMS_KEY_FORM_SAVE = "Save"
TEAMS_EMAIL_HIDDEN_FIX = "Ask a Teams admin to check that your account has an email address or a user principal name."
TEAMS_NO_EMAIL = (
    f"Ackgate can't see your email address in Teams, so it can't match you to PagerDuty. {TEAMS_EMAIL_HIDDEN_FIX}"
)
TEAMS_DECISION_RECORDING = (
    f"Recording your decision… This card updates for everyone when it is done; if it does not, type {COMMAND} list."
)
TEAMS_INVOKE_UNKNOWN = "Ackgate does not handle that kind of Teams action."
TEAMS_UNAUTHENTICATED = "This request is not a genuine Teams activity for this bot."
TEAMS_BAD_ACTIVITY = "The body is not a Teams activity Ackgate can read."
TEAMS_NEEDS_JSON = "Send the activity as application/json."
TEAMS_TOO_LARGE = "The activity is too large."


def teams_not_reachable(who: str) -> str:
    return (
        f"Ackgate cannot message {who} in Teams: the Ackgate app is not installed for them. "
        "Ask them to add the Ackgate app in Teams (or to message it once)."
    )


def unreached_approvers(emails: Sequence[str]) -> str:
    return (
        f" Not reachable in chat: {', '.join(emails)} (no chat account Ackgate can message, "
        "or the Ackgate app is not installed for them)."
    )


# --- the grant lifecycle: failures, recovery, long lists -------------------------------------


def provisioner_crashed(exc: Exception) -> str:
    # Only the type: an unexpected error's text may carry anything, secrets included.
    return f"The provisioner failed unexpectedly ({type(exc).__name__})."


def approvers_label(emails: tuple[str, ...] | list[str]) -> str:
    return ", ".join(emails)


def approved_not_provisioned(who: str) -> str:
    return f"Approved by {who}, but the access could not be provisioned"


def more_grants(hidden: int) -> str:
    return (
        f"{hidden} more active grant(s) are not shown here. Each holder is told when a grant ends; "
        f"end one early with {COMMAND} revoke <grant id>."
    )


# --- chat platforms (issue 7: the core assumes none) ----------------------------------------------

NO_CHAT_PLATFORM = (
    "No chat platform is configured: set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET for Slack, "
    "or MICROSOFT_APP_ID, MICROSOFT_APP_PASSWORD and MICROSOFT_APP_TENANT_ID for Teams "
    "(Ackgate needs at least one chat platform to take requests)."
)
TEAMS_NO_APP_ID = (
    "MICROSOFT_APP_ID is missing: Teams needs the Azure Bot's app id (a GUID) beside MICROSOFT_APP_PASSWORD"
)
TEAMS_BAD_APP_ID = (
    "MICROSOFT_APP_ID must be the Azure Bot's Microsoft App ID, a GUID; an empty id would turn off "
    "Teams authentication, so Ackgate refuses it"
)
TEAMS_NO_APP_PASSWORD = (
    "MICROSOFT_APP_PASSWORD is missing: set it to a client secret of the Azure Bot's app registration"  # noqa: S105 - a sentence, not a password
)
TEAMS_NO_TENANT = (
    "MICROSOFT_APP_TENANT_ID is missing: a SingleTenant bot gets its token from its own tenant; "
    "set it to the Directory (tenant) ID of the app registration"
)
TEAMS_NO_SERVICE_HOSTS = "TEAMS_SERVICE_URL_HOSTS is empty: leave it unset for the public cloud's Bot Connector hosts"


def policy_channel_unknown(text: str, known: tuple[str, ...]) -> str:
    return (
        f"{text!r} does not name a chat platform Ackgate knows. Write it as platform:channel, "
        f"with one of {', '.join(known)}: e.g. slack:C0123ABCDEF or teams:19:abc@thread.tacv2"
    )


def policy_channel_unconfigured(platform: str, configured: tuple[str, ...]) -> str:
    others = ", ".join(configured) or "none"
    return (
        f"the approval channel is on {platform}, which this deployment does not configure (configured: {others}). "
        f"Configure {platform}, or move the channel to a configured platform"
    )


CHECKED_NOW = "Success (checked just now)"


def mirror_channel_unconfigured(channel: str, configured: tuple[str, ...]) -> str:
    return (
        f"ACKGATE_MIRROR_CHANNEL is invalid: {channel!r} is on a chat platform this deployment does not configure "
        f"(configured: {', '.join(configured) or 'none'}). Write it as platform:channel on a configured platform, "
        "e.g. slack:C0123ABCDEF."
    )
