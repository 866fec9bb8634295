"""correlationId: the 8-4-4-4-12 hex form only, read as the UUID it spells (bruto.gateway.validation)."""

from __future__ import annotations

import re
import uuid

import orjson
import pytest
from hypothesis import example
from hypothesis import given
from hypothesis import strategies as st

from bruto.gateway.validation import InvalidPayment
from bruto.gateway.validation import parse_payment

ID = "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3"
CANONICAL = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def read_id(value) -> bytes:
    return parse_payment(orjson.dumps({"correlationId": value, "amount": 1}))[0]


@pytest.mark.parametrize("value", [
    "4a7901b87d264d9daa194dc1c7cf60b3",              # no hyphens
    "{4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3}",        # braces
    "urn:uuid:4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3",  # urn
    "4a7901b8-7d26-4d9d-aa19-4dc1c7cf6_b3",          # int() takes underscores: read as another UUID
    " 4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b",          # ... and spaces
    "\u0664a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3",     # ... and non-ASCII digits
    "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60 3",
    "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3\n",
    "4a7901b8+7d26-4d9d-aa19-4dc1c7cf60b3",
    "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60g3",
    "",
])
def test_other_spellings_are_refused(value):
    with pytest.raises(InvalidPayment) as raised:
        read_id(value)
    assert (raised.value.status, raised.value.message) == (422, "correlationId must be a UUID")


@given(st.uuids())
def test_every_uuid_in_either_case_is_read_as_itself(value):
    assert read_id(str(value)) == value.bytes
    assert read_id(str(value).upper()) == value.bytes


@given(st.text(alphabet=st.sampled_from("0123456789abcdefABCDEF-_ {}\u0664\u00e9g"), min_size=30, max_size=40)
       | st.text(max_size=40))
@example(ID)
def test_a_string_is_accepted_exactly_when_it_is_the_canonical_form(value):
    if CANONICAL.fullmatch(value):
        assert read_id(value) == uuid.UUID(value).bytes
    else:
        with pytest.raises(InvalidPayment):
            read_id(value)
