"""The count of users of shared hooks: the first puts them in place, the last takes them off."""

from __future__ import annotations

from runtime_guard._users import Users


def test_only_the_first_user_switches_on_and_only_the_last_switches_off() -> None:
    """Two users: the second add and the first remove change nothing."""
    users = Users()
    assert not users.any
    assert users.add() is True
    assert users.add() is False
    assert users.any
    assert users.remove() is False
    assert users.remove() is True
    assert not users.any


def test_a_remove_without_a_user_is_ignored() -> None:
    """Disabling what nobody enabled neither switches off nor leaves the count negative."""
    users = Users()
    assert users.remove() is False
    assert users.add() is True
