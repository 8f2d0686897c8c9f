"""The shared FHIR builders over small frames: the JSON each writes, through the same fhir_json that
writes every resource, compared with the FHIR it must be."""

import json

import polars as pl
import pytest

from migration_assets.elements.base import control_character, invalid_date
from migration_assets.elements.builders import (
    DATA_ABSENT_REASON_EXTENSION,
    DATA_ABSENT_REASON_SYSTEM,
    absent_primitive,
    address,
    checked_identifier,
    contact_point,
    data_absent_extension,
    data_absent_reason,
    decimal,
    embed_decimals,
    ends_before_start,
    human_name,
    is_decimal,
    matches,
    per_distinct,
    period,
    quantity,
    split_comparator,
    telecom,
    ucum_codes,
    valid_npi,
    vocabulary_concept,
)
from migration_assets.elements.fhir_json import fhir_json, json_array, json_object, json_resource, json_string, present
from migration_assets.elements.terminology import LOINC, NPI, UCUM

LOCAL = "https://ehr.example.org/fhir/CodeSystem/observation-test"


def written(frame: pl.DataFrame, **members: pl.Expr) -> list[str]:
    """Each row's resource JSON text, as the elements write it (decimals embedded)."""
    resource = pl.struct(pl.lit("Basic").alias("resourceType"), *[expr.alias(name) for name, expr in members.items()])
    return frame.select(embed_decimals(fhir_json(resource))).to_series().to_list()


def parsed(frame: pl.DataFrame, **members: pl.Expr) -> list[dict]:
    """Each row's resource, parsed, without its resourceType."""
    rows = [json.loads(text) for text in written(frame, **members)]
    for row in rows:
        assert row.pop("resourceType") == "Basic"
    return rows


def flags(frame: pl.DataFrame, check: pl.Expr) -> list[bool]:
    return frame.select(check).to_series().to_list()


def test_human_name_takes_given_names_from_several_columns_and_drops_blank_parts():
    names = pl.DataFrame(
        {
            "last": ["Doe", " Smith ", None, "  "],
            "first": ["Jane", "John", None, None],
            "middle": ["Ann", "  ", None, None],
            "title": ["Dr.", None, None, None],
            "suffix": [None, "Jr.", None, None],
        }
    )
    name = human_name(
        family=pl.col("last"),
        given=(pl.col("first"), pl.col("middle")),
        prefix=(pl.col("title"),),
        suffix=(pl.col("suffix"),),
        use="official",
    )
    assert parsed(names, name=present(name)) == [
        {"name": [{"use": "official", "family": "Doe", "given": ["Jane", "Ann"], "prefix": ["Dr."]}]},
        {"name": [{"use": "official", "family": "Smith", "given": ["John"], "suffix": ["Jr."]}]},
        {},  # no part at all: no name, not a name holding only its use
        {},
    ]


def test_human_name_text_and_refused_use():
    names = pl.DataFrame({"full": ["Jane A. Doe"]})
    assert parsed(names, name=present(human_name(name_text=pl.col("full"), use=pl.lit("usual")))) == [
        {"name": [{"use": "usual", "text": "Jane A. Doe"}]}
    ]
    with pytest.raises(ValueError, match="HumanName.use 'legal'"):
        human_name(family=pl.col("full"), use="legal")
    with pytest.raises(ValueError, match="at least one"):
        human_name(use="official")


def test_address_lines_in_order_without_blanks():
    rows = pl.DataFrame(
        {
            "street": ["1 Main St", None],
            "unit": ["Apt 2", None],
            "city": ["Springfield", None],
            "state": ["IL", None],
            "zip": ["62701", " "],
            "country": ["US", None],
        }
    )
    home = address(
        lines=(pl.col("street"), pl.col("unit")),
        city=pl.col("city"),
        state=pl.col("state"),
        postal_code=pl.col("zip"),
        country=pl.col("country"),
        use="home",
    )
    assert parsed(rows, address=present(home)) == [
        {
            "address": [
                {
                    "use": "home",
                    "line": ["1 Main St", "Apt 2"],
                    "city": "Springfield",
                    "state": "IL",
                    "postalCode": "62701",
                    "country": "US",
                }
            ]
        },
        {},
    ]
    with pytest.raises(ValueError, match="Address.use"):
        address(city=pl.col("city"), use="mobile")


def test_contact_points_with_empty_values_are_dropped():
    rows = pl.DataFrame({"phone": ["555-0100", None, ""], "email": ["jane@example.org", "john@example.org", None]})
    points = telecom(
        contact_point("phone", pl.col("phone"), use="home"),
        contact_point("email", pl.col("email")),
    )
    assert parsed(rows, telecom=points) == [
        {
            "telecom": [
                {"system": "phone", "value": "555-0100", "use": "home"},
                {"system": "email", "value": "jane@example.org"},
            ]
        },
        {"telecom": [{"system": "email", "value": "john@example.org"}]},
        {},
    ]
    with pytest.raises(ValueError, match="ContactPoint.system 'telephone'"):
        contact_point("telephone", pl.col("phone"))


def test_period_and_end_before_start():
    rows = pl.DataFrame(
        {
            "start": ["2020-01-05", "2020-02", "2020", "2020-01-01T10:00:00+05:00", "2020-01-01T10:00:00Z", None, None],
            "end": [
                "2020-01-04",
                "2020-01-31",
                "2020-06-30",
                "2020-01-01T06:00:00Z",
                "2020-01-01T09:59:59Z",
                "2021",
                None,
            ],
        }
    )
    assert parsed(rows, effectivePeriod=period(pl.col("start"), pl.col("end")))[5:] == [
        {"effectivePeriod": {"end": "2021"}},
        {},
    ]
    assert flags(rows, ends_before_start(pl.col("start"), pl.col("end"))) == [
        True,  # a day earlier
        True,  # January is before February, at month precision
        False,  # 2020 against 2020-06-30: the same year, not certainly before
        False,  # 05:00Z start, 06:00Z end: compared as instants, not as text
        True,
        False,  # no start: nothing to compare
        False,
    ]


def test_decimals_keep_every_digit_as_given():
    rows = pl.DataFrame({"value": ["5.10", "0.1", "-0.0", "1.5e3", "007", ".5", "5.", "+1", " 5", None]})
    assert flags(rows, is_decimal(pl.col("value"))) == [
        True,
        True,
        True,
        True,
        False,
        False,
        False,
        False,
        False,
        False,
    ]
    texts = written(rows, valueDecimal=decimal(pl.col("value")))
    assert texts[:4] == [
        '{"resourceType":"Basic","valueDecimal":5.10}',
        '{"resourceType":"Basic","valueDecimal":0.1}',
        '{"resourceType":"Basic","valueDecimal":-0.0}',
        '{"resourceType":"Basic","valueDecimal":1.5e3}',
    ]
    assert set(texts[4:]) == {'{"resourceType":"Basic"}'}


def test_decimals_left_marked_are_caught_as_control_characters():
    # An element that forgets embed_decimals writes the marker, which the shared control-character rule refuses.
    rows = pl.DataFrame({"value": ["5.10"]})
    raw = rows.select(fhir_json(pl.struct(decimal(pl.col("value")).alias("valueDecimal"))).alias("resource"))
    assert raw.select(control_character(pl.col("resource"))).item() == "0001"


def test_split_comparator():
    rows = pl.DataFrame({"value": ["<0.5", ">= 10", "7.20", "about 5", None]})
    comparator, number = split_comparator(pl.col("value"))
    assert rows.select(comparator.alias("c"), number.alias("n")).rows() == [
        ("<", "0.5"),
        (">=", "10"),
        (None, "7.20"),
        (None, None),
        (None, None),
    ]


def test_quantity_codes_only_ucum_units_and_keeps_the_unit_as_given():
    rows = pl.DataFrame(
        {
            "value": ["120", "5.10", "<0.5", "98.60", "QNS", "3"],
            "unit": ["mm[Hg]", "mmHg", "mg/dL", "[degF]", "mg/dL", " "],
        }
    )
    ucum_map = pl.DataFrame({"code": ["mm[Hg]", "mg/dL", "[degF]"], "description": ["", "", ""]})
    comparator, number = split_comparator(pl.col("value"))
    texts = written(rows, valueQuantity=quantity(number, pl.col("unit"), ucum_map, comparator))
    assert texts[1] == '{"resourceType":"Basic","valueQuantity":{"value":5.10,"unit":"mmHg"}}'
    assert [json.loads(text).get("valueQuantity") for text in texts] == [
        {"value": 120, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"},
        {"value": 5.1, "unit": "mmHg"},  # not a UCUM code: kept as text, never converted
        {"value": 0.5, "comparator": "<", "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
        {"value": 98.6, "unit": "[degF]", "system": UCUM, "code": "[degF]"},
        None,  # not a number: no quantity (the element quarantines the row)
        {"value": 3},  # a blank unit is left out, never written as ""
    ]
    # A set of codes works as the map does.
    assert written(rows.head(1), q=quantity(pl.col("value"), pl.col("unit"), {"mm[Hg]"})) == [
        f'{{"resourceType":"Basic","q":{{"value":120,"unit":"mm[Hg]","system":"{UCUM}","code":"mm[Hg]"}}}}'
    ]
    # An unknown comparator gives no quantity: writing 0.5 without it would change the result.
    odd = pl.DataFrame({"value": ["0.5", "0.5"], "comparator": ["~", None]})
    assert parsed(odd, valueQuantity=quantity(pl.col("value"), None, set(), pl.col("comparator"))) == [
        {},
        {"valueQuantity": {"value": 0.5}},
    ]
    assert ucum_codes(ucum_map) == ["[degF]", "mg/dL", "mm[Hg]"]
    with pytest.raises(ValueError, match="no column 'ucum'"):
        ucum_codes(ucum_map, column="ucum")


def test_vocabulary_concept_keeps_the_local_code_and_adds_the_mapped_one():
    rows = pl.DataFrame({"test": ["HR", "XYZ", None], "name": ["Heart rate", "Local test", None]})
    vocabulary = pl.DataFrame({"local_code": ["HR", "NA"], "code": ["8867-4", None], "display": ["Heart rate", None]})
    concept, mapped = vocabulary_concept(
        pl.col("test"),
        LOCAL,
        vocabulary,
        standard_system=LOINC,
        local_display=pl.col("name"),
        concept_text=pl.col("name"),
    )
    assert parsed(rows, code=concept) == [
        {
            "code": {
                "coding": [
                    {"system": LOCAL, "code": "HR", "display": "Heart rate"},
                    {"system": LOINC, "code": "8867-4", "display": "Heart rate"},
                ],
                "text": "Heart rate",
            }
        },
        {"code": {"coding": [{"system": LOCAL, "code": "XYZ", "display": "Local test"}], "text": "Local test"}},
        {},
    ]
    assert flags(rows, mapped) == [True, False, False]


def test_vocabulary_concept_with_a_system_column_and_refused_tables():
    rows = pl.DataFrame({"code": ["A", "B"]})
    vocabulary = pl.DataFrame(
        {"local_code": ["A", "B"], "system": [LOINC, "http://snomed.info/sct"], "code": ["1-8", "22298006"]}
    )
    concept, _ = vocabulary_concept(pl.col("code"), LOCAL, vocabulary)
    assert [row["code"]["coding"][1] for row in parsed(rows, code=concept)] == [
        {"system": LOINC, "code": "1-8"},
        {"system": "http://snomed.info/sct", "code": "22298006"},
    ]
    with pytest.raises(ValueError, match="more than once: \\['A'\\]"):
        vocabulary_concept(pl.col("code"), LOCAL, pl.concat([vocabulary, vocabulary.head(1)]))
    with pytest.raises(ValueError, match="pass standard_system"):
        vocabulary_concept(pl.col("code"), LOCAL, vocabulary.drop("system"))
    with pytest.raises(ValueError, match="lacks columns \\['local_code'\\]"):
        vocabulary_concept(pl.col("code"), LOCAL, vocabulary.drop("local_code"))


def test_data_absent_reason_element_and_extension():
    rows = pl.DataFrame({"birth_date": ["1980-07-15", None, " "], "reason": ["masked", "asked-unknown", "bogus"]})
    assert parsed(rows, dataAbsentReason=data_absent_reason(pl.col("reason"))) == [
        {
            "dataAbsentReason": {
                "coding": [{"system": DATA_ABSENT_REASON_SYSTEM, "code": "masked", "display": "Masked"}]
            }
        },
        {
            "dataAbsentReason": {
                "coding": [
                    {"system": DATA_ABSENT_REASON_SYSTEM, "code": "asked-unknown", "display": "Asked But Unknown"}
                ]
            }
        },
        {},  # not a data-absent-reason code: nothing written
    ]
    assert parsed(
        rows,
        birthDate=pl.col("birth_date").str.strip_chars().replace("", None),
        _birthDate=absent_primitive(pl.col("birth_date"), "unknown"),
    ) == [
        {"birthDate": "1980-07-15"},
        {"_birthDate": {"extension": [{"url": DATA_ABSENT_REASON_EXTENSION, "valueCode": "unknown"}]}},
        {"_birthDate": {"extension": [{"url": DATA_ABSENT_REASON_EXTENSION, "valueCode": "unknown"}]}},
    ]
    assert parsed(rows.head(1), extension=data_absent_extension("not-applicable")) == [
        {"extension": [{"url": DATA_ABSENT_REASON_EXTENSION, "valueCode": "not-applicable"}]}
    ]
    with pytest.raises(ValueError, match="data-absent-reason code 'n/a'"):
        data_absent_reason("n/a")


def test_npi_luhn_with_the_80840_prefix():
    # 1234567893 is CMS' worked example of the check digit.
    rows = pl.DataFrame({"npi": ["1234567893", "1234567890", "123456789", "12345678930", "123456789X", None]})
    assert flags(rows, valid_npi(pl.col("npi"))) == [True, False, False, False, False, False]
    identifier = checked_identifier(NPI, pl.col("npi"), valid_npi(pl.col("npi")))
    assert parsed(rows.head(2), identifier=present(identifier)) == [
        {"identifier": [{"system": NPI, "value": "1234567893"}]},
        {},
    ]


def test_pattern_check_is_anchored():
    rows = pl.DataFrame({"mrn": ["00123456", "123456", "A0012345678", None]})
    assert flags(rows, matches(pl.col("mrn"), r"\d{8}|A\d{10}")) == [True, False, True, False]


def test_json_written_as_text_leaves_absent_members_out_and_escapes_values():
    frame = pl.DataFrame({"a": [None, 'say "hi"\\', "null"], "b": [None, None, "1"]})
    written = frame.select(
        json_object(
            kind=json_string("Patient"),
            a=json_string(pl.col("a")),
            items=json_array(json_string(pl.col("b")), json_object(b=json_string(pl.col("b")))),
        )
    ).to_series()
    assert [json.loads(text) for text in written] == [
        {"kind": "Patient"},
        {"kind": "Patient", "a": 'say "hi"\\'},
        {"kind": "Patient", "a": "null", "items": ["1", {"b": "1"}]},
    ]


def test_json_strings_are_the_bytes_a_json_encoder_writes():
    # Every character an encoder escapes (control characters, quote, backslash), and some it does not.
    texts = [f"a{chr(code)}b" for code in range(0x80)] + ["\u2028é😀", '\\"\\', "", None]
    frame = pl.DataFrame({"s": texts})
    written = frame.select(json_string(pl.col("s"))).to_series().to_list()
    by_struct = frame.select(pl.struct("s").struct.json_encode().str.slice(5).str.strip_suffix("}"))
    assert written == [None if text is None else json.dumps(text, ensure_ascii=False) for text in texts]
    assert written[:-1] == by_struct.to_series().to_list()[:-1]


def test_a_resource_written_as_text_starts_with_its_type_and_leaves_absent_members_out():
    frame = pl.DataFrame({"a": [None, 'say "hi"', None], "b": [None, None, "1"]})
    written = frame.select(
        json_resource("Patient", a=json_string(pl.col("a")), items=json_array(json_string(pl.col("b"))))
    ).to_series()
    assert written.to_list() == [
        '{"resourceType":"Patient"}',
        '{"resourceType":"Patient","a":"say \\"hi\\""}',
        '{"resourceType":"Patient","items":["1"]}',
    ]


def test_a_date_is_refused_when_it_is_no_real_date_at_its_precision():
    dates = {
        "1980": False,
        " 1980-02 ": False,
        "1980-12": False,
        "1980-02-29": False,
        "0000-01-01": False,
        None: False,
        "1980-00": True,
        "1980-13": True,
        "1981-02-29": True,
        "1980-04-31": True,
        "1980-01-00": True,
        "1980-1": True,
        "19800101": True,
        "1980-01-01T00:00": True,
        "": True,
        "abcd": True,
    }
    frame = pl.DataFrame({"d": list(dates)})
    assert frame.select(invalid_date("d")).to_series().to_list() == list(dates.values())


def test_values_derived_per_distinct_combination_land_on_their_rows_in_order():
    rows = pl.DataFrame({"a": ["1", None, "1", "2", None, "1"], "b": ["x", "y", "x", None, "y", "z"]})
    chunked = pl.concat([rows.slice(0, 4), rows.slice(4)], rechunk=False)

    def derive(frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame.with_columns(ab=pl.concat_str("a", "b", separator="+"), b_null=pl.col("b").is_null())

    derived = chunked.lazy().select(per_distinct(["a", "b"], derive).alias("d")).unnest("d").collect()
    assert (
        derived.to_dicts()
        == rows.with_columns(ab=pl.concat_str("a", "b", separator="+"), b_null=pl.col("b").is_null())
        .select("ab", "b_null")
        .to_dicts()
    )


def test_values_derived_per_distinct_combination_stay_right_when_two_combinations_share_a_hash(monkeypatch):
    rows = pl.DataFrame({"a": ["1", None, "1", "2"], "b": ["x", "y", "x", None]})

    def derive(frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame.with_columns(ab=pl.concat_str("a", "b", separator="+"))

    # Every row hashed alike: the rows are then joined to their combination by their values.
    monkeypatch.setattr(pl.DataFrame, "hash_rows", lambda frame: pl.Series([0] * frame.height, dtype=pl.UInt64))
    derived = rows.lazy().select(per_distinct(["a", "b"], derive).alias("d")).unnest("d").collect()
    assert derived["ab"].to_list() == ["1+x", None, "1+x", None]


def test_values_derived_per_distinct_combination_are_not_gathered_into_one_chunk():
    # polars spreads the expressions that use them over the chunks: one chunk would run them on one core.
    rows = pl.concat([pl.DataFrame({"a": [str(n % 7) for n in range(1000)]})] * 3, rechunk=False)

    def derive(frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame.with_columns(b=pl.col("a") + "!")

    derived = rows.lazy().select(per_distinct(["a"], derive).alias("d")).collect()["d"]
    assert len(derived.chunk_lengths()) > 1
    assert derived.struct.field("b").to_list() == [f"{n % 7}!" for n in range(1000)] * 3
