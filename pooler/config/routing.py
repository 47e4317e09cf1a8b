"""The order rules are tried in (reference §2.2): file order with `sequential_routing yes`,
else most specific first. The router matches clients in this order and SHOW RULES lists it."""

from __future__ import annotations

from collections.abc import Sequence

from pooler.config.model import Rule


def specificity(rule: Rule) -> int:
    return (
        1000 * (rule.database is not None)
        + 100 * (rule.user is not None)
        + 10 * (rule.address is not None)
        + (rule.conn_type != "default")
    )


def routing_order(rules: Sequence[Rule], sequential: bool) -> tuple[Rule, ...]:
    """Rules in the order they are tried: file order, or most specific first (odyssey).

    A group counts as a named user (odyssey). Between a user rule and a group rule of equal
    specificity that both match a client, the user rule comes first (odyssey compares the
    names `alice` and `group_NAME` as strings, so its choice depends on spelling); among
    groups, the group names' order (odyssey's)."""
    if sequential:
        return tuple(sorted(rules, key=lambda r: r.order))
    return tuple(
        sorted(
            rules,
            key=lambda r: (
                -specificity(r),
                r.database or "",
                r.group,
                r.user or "",
                r.address is None,
                r.address or "",
                r.conn_type,
                r.order,
            ),
        )
    )
