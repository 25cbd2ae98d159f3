"""Cards for authentication requests: what the requester, the target and the mirror channel see.

The link's token only ever travels in :func:`target_card`'s link, sent to the target alone.
"""

from __future__ import annotations

from bot.core import messages
from bot.core.domain import AuthStatus, AuthTransaction
from bot.core.views import Card, Fact, Link, Tone

_OUTCOME_TONE = {
    AuthStatus.PENDING: Tone.INFO,
    AuthStatus.VERIFIED: Tone.SUCCESS,
    AuthStatus.DENIED: Tone.DANGER,
    AuthStatus.EXPIRED: Tone.WARNING,
}


def outcome(tx: AuthTransaction) -> str:
    """One line for the transaction's state, e.g. ``Identity verified by bob@… at 12:04 UTC, 23 Nov``."""
    target = tx.target.email
    decided = tx.decided_at or tx.expires_at
    if tx.status is AuthStatus.VERIFIED:
        return messages.auth_verified(target, decided)
    if tx.status is AuthStatus.DENIED:
        return messages.auth_denied(target, decided)
    if tx.status is AuthStatus.EXPIRED:
        return messages.auth_expired(target)
    return messages.auth_pending_title(target)


def requester_card(tx: AuthTransaction) -> Card:
    """The requester's status message: pending with who was reached and how, then the outcome."""
    facts = [
        Fact("Transaction", tx.id),
        Fact("To", tx.target.email),
        Fact("Reached by", messages.auth_reached(tx.channels)),
    ]
    if tx.message:
        facts.append(Fact("Message", tx.message))
    if tx.note:
        facts.append(Fact("Note", tx.note))
    pending = tx.status is AuthStatus.PENDING
    return Card(
        title=outcome(tx),
        text=messages.auth_pending_text(tx.expires_at) if pending else "",
        facts=tuple(facts),
        tone=_OUTCOME_TONE[tx.status],
    )


def unreachable_card(tx: AuthTransaction, detail: str) -> Card:
    """The requester's answer when neither PagerDuty nor chat reached the target."""
    return Card(
        title=messages.auth_expired(tx.target.email),
        text=messages.auth_unreachable(tx.target.email, detail),
        facts=(Fact("Transaction", tx.id),),
        tone=Tone.DANGER,
    )


def target_card(tx: AuthTransaction, *, link: str) -> Card:
    """The target's direct message, carrying the single-use link to the verification page."""
    facts = []
    if tx.message:
        facts.append(Fact("Message", tx.message))
    facts += [Fact("Context", tx.context), Fact("Link expires", messages.when(tx.expires_at))]
    return Card(
        title=messages.auth_target_title(tx.requester.email),
        text=messages.AUTH_TARGET_TEXT,
        facts=tuple(facts),
        links=(Link(messages.AUTH_LINK_TEXT, link),),
        footnote=f"Transaction {tx.id}",
        tone=Tone.WARNING,
    )


def target_done_card(tx: AuthTransaction) -> Card:
    """The target's message once the request ended: the link is gone from it."""
    return Card(
        title=messages.auth_target_title(tx.requester.email),
        text=messages.auth_target_done(tx.status.value, tx.decided_at),
        facts=(Fact("Message", tx.message),) if tx.message else (),
        footnote=f"Transaction {tx.id}",
        tone=_OUTCOME_TONE[tx.status],
    )


def mirror_fact(tx: AuthTransaction) -> Fact:
    """The transaction's state as one fact, for a channel message that shows it beside its incident."""
    return Fact("Authentication request", outcome(tx))
