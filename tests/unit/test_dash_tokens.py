"""The API tokens page's pure parts: reading the create form, and single-use form ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tollgate.dashboard.tokens import (
    FORM_ID_SECONDS,
    MAX_EXPIRY_DAYS,
    NAME_MAX,
    OnceForms,
    TokenFormError,
    read_create_form,
)

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
ALL = frozenset({"run", "read", "edit"})


def test_a_good_form_gives_name_permissions_and_expiry() -> None:
    form = {"name": "  ci-deploy ", "perm_run": "on", "perm_read": "on", "expires_days": "30"}
    assert read_create_form(form, ALL, NOW) == (
        "ci-deploy",
        frozenset({"run", "read"}),
        NOW + timedelta(days=30),
    )
    assert read_create_form({"name": "x", "perm_edit": "on"}, ALL, NOW)[2] is None
    assert read_create_form({"name": "x" * NAME_MAX, "perm_edit": "on"}, ALL, NOW)[0]


@pytest.mark.parametrize(
    ("form", "field", "message"),
    [
        ({"name": "", "perm_run": "on"}, "name", "Enter a name"),
        ({"name": "   ", "perm_run": "on"}, "name", "Enter a name"),
        ({"name": "x" * (NAME_MAX + 1), "perm_run": "on"}, "name", "at most 200"),
        ({"name": "x"}, "permissions", "Choose at least one permission."),
        ({"name": "x", "perm_run": "on", "expires_days": "-5"}, "expires_days", "whole number"),
        ({"name": "x", "perm_run": "on", "expires_days": "0"}, "expires_days", "whole number"),
        ({"name": "x", "perm_run": "on", "expires_days": "1.5"}, "expires_days", "whole number"),
        ({"name": "x", "perm_run": "on", "expires_days": "soon"}, "expires_days", "whole number"),
        ({"name": "x", "perm_run": "on", "expires_days": "١٢"}, "expires_days", "whole number"),
        (
            {"name": "x", "perm_run": "on", "expires_days": str(MAX_EXPIRY_DAYS + 1)},
            "expires_days",
            "at most 3650 days",
        ),
    ],
)
def test_bad_forms_name_the_field_and_what_to_do(
    form: dict[str, str], field: str, message: str
) -> None:
    with pytest.raises(TokenFormError) as caught:
        read_create_form(form, ALL, NOW)
    assert caught.value.status == 400
    assert message in caught.value.errors[field]


def test_no_permission_beyond_the_signed_in_token() -> None:
    with pytest.raises(TokenFormError) as caught:
        read_create_form(
            {"name": "x", "perm_run": "on", "perm_read": "on"}, frozenset({"read", "edit"}), NOW
        )
    assert caught.value.status == 403
    assert "lacks 'run'" in caught.value.errors["permissions"]
    assert "(read, edit)" in caught.value.errors["permissions"]
    # Bad input is reported first (400), before the permission question.
    with pytest.raises(TokenFormError) as caught:
        read_create_form({"name": "", "perm_run": "on"}, frozenset({"read", "edit"}), NOW)
    assert caught.value.status == 400


def test_a_form_id_works_once_for_its_own_session_only() -> None:
    clock = [0.0]
    forms = OnceForms(clock=lambda: clock[0])
    first = forms.issue("csrf-a")
    assert forms.use(first, "csrf-a") is True
    assert forms.use(first, "csrf-a") is False  # a resubmitted form
    theirs = forms.issue("csrf-b")
    assert forms.use(theirs, "csrf-a") is False
    assert forms.use(theirs, "csrf-b") is True  # another session's attempt did not spend it
    assert forms.use(None, "csrf-a") is False
    old = forms.issue("csrf-a")
    clock[0] = FORM_ID_SECONDS + 1
    assert forms.use(old, "csrf-a") is False
