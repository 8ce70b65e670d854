"""The public task reference's payload tables are the ones the schema code generates."""

from __future__ import annotations

from pathlib import Path

from sokovan.admission.docs import BEGIN, END, PAGE, render
from sokovan.admission.schemas import PUBLIC_PAYLOADS

REFERENCE = Path(__file__).resolve().parents[2] / PAGE


def test_reference_payload_section_is_generated_from_the_schemas() -> None:
    text = REFERENCE.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == render(), f"run: python -m sokovan.admission.docs {PAGE}"


def test_every_public_task_and_field_is_documented() -> None:
    section = render()
    for task, model in PUBLIC_PAYLOADS.items():
        assert f"`{task}`" in section
        for name in model.model_fields:
            assert f"| `{name}` |" in section


def test_every_public_task_has_a_schema() -> None:
    from tasks import names

    assert set(PUBLIC_PAYLOADS) == set(names.PUBLIC)
